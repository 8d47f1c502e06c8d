"""The gateway's /api routes, one module per resource."""
