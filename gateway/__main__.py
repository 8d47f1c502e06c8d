"""`python -m gateway`: run the gateway with settings from GATEWAY_* variables."""

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.common.serve import serve

raise SystemExit(serve("gateway", create_app, GatewaySettings()))
