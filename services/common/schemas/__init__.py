"""The wire contract of each service: the models the service answers with and the gateway reads."""
