"""The gateway: the public entry point, serving the web page and /api/*, orchestrating the services."""
