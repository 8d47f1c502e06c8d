"""Typed dependencies the gateway's routes take: the service clients and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.clients import ServiceClients
from gateway.settings import GatewaySettings


def get_clients(request: Request) -> ServiceClients:
    return request.app.state.clients


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


ClientsDep = Annotated[ServiceClients, Depends(get_clients)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
