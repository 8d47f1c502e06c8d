"""Code every service and the gateway share: errors, HTTP client, logging, health, settings."""
