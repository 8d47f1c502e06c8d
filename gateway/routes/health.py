"""GET /api/health and GET /api/info: how the gateway and each service are doing, and what is loaded.

GET /internal/health is the operators' version of /api/health, with each service's URL and the
reasons as given; the reverse proxy does not pass /internal/ on, so only the services' own network
reaches it. The public one names no internal address or path (gateway/public.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.clients import ServiceClients
from gateway.dependencies import ClientsDep, SettingsDep
from gateway.public import public_model, redact
from gateway.schemas import GatewayHealth, Info, ServiceHealth

router = APIRouter(prefix="/api", tags=["operations"])
internal_router = APIRouter(prefix="/internal", tags=["operations"])

SERVICES = ("embedder", "search", "fetcher")


async def _health(clients: ServiceClients, *, internal: bool) -> JSONResponse:
    answers = await asyncio.gather(*(clients.readiness(name) for name in SERVICES))
    services = {
        name: ServiceHealth(ready=ready, url=clients.urls[name], reason=reason)
        if internal
        else ServiceHealth(ready=ready, reason=redact(reason))
        for name, (ready, reason) in zip(SERVICES, answers, strict=True)
    }
    everything = all(s.ready for s in services.values())
    body = GatewayHealth(status="ok" if everything else "degraded", services=services)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if everything else 503)


@router.get("/health", response_model=GatewayHealth, responses={503: {"model": GatewayHealth}})
async def health(clients: ClientsDep) -> JSONResponse:
    """Whether each service is ready, with the reason for any that is not (no internal addresses).
    503 when one is not."""
    return await _health(clients, internal=False)


@internal_router.get("/health", response_model=GatewayHealth, responses={503: {"model": GatewayHealth}})
async def internal_health(clients: ClientsDep) -> JSONResponse:
    """As /api/health, with each service's URL and its reason as given. Not passed on by the proxy."""
    return await _health(clients, internal=True)


@router.get("/info", response_model=Info)
async def info(clients: ClientsDep, settings: SettingsDep) -> Info:
    """The notice to show, the model in use (its checkpoint by file name only) and what the index holds (null
    parts are down)."""
    model, index = await asyncio.gather(
        clients.json_or_none("embedder", "/v1/model"), clients.json_or_none("search", "/v1/stats")
    )
    return Info(notice=settings.notice, model=public_model(model), index=index)
