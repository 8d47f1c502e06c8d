"""GET /api/health and GET /api/info: how the gateway and each service are doing, and what is loaded.

GET /internal/health is the operators' version of /api/health, with each service's URL and the
reasons as given; the reverse proxy does not pass /internal/ on, so only the services' own network
reaches it. The public one names no internal address or path (gateway/public.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.clients import ReplicaReadiness, ServiceClients
from gateway.dependencies import ClientsDep, SettingsDep
from gateway.public import public_model, redact
from gateway.schemas import GatewayHealth, Info, ReplicaHealth, ServiceHealth

router = APIRouter(prefix="/api", tags=["operations"])
internal_router = APIRouter(prefix="/internal", tags=["operations"])

SERVICES = ("embedder", "search", "fetcher")


def _service_health(url: str, replicas: list[ReplicaReadiness], *, internal: bool) -> ServiceHealth:
    ready = [r for r in replicas if r.ready]
    if not ready:
        reason = replicas[0].reason
    elif len(ready) < len(replicas):
        reason = f"{len(ready)} of {len(replicas)} replicas ready"
    else:
        reason = None
    listed = [
        ReplicaHealth(ready=r.ready, url=r.url, reason=r.reason)
        if internal
        else ReplicaHealth(ready=r.ready, reason=redact(r.reason))
        for r in replicas
    ]
    if internal:
        return ServiceHealth(ready=bool(ready), url=url, reason=reason, replicas=listed)
    return ServiceHealth(ready=bool(ready), reason=redact(reason), replicas=listed)


async def _health(clients: ServiceClients, *, internal: bool) -> JSONResponse:
    answers = await asyncio.gather(*(clients.readiness(name) for name in SERVICES))
    services = {
        name: _service_health(clients.urls[name], replicas, internal=internal)
        for name, replicas in zip(SERVICES, answers, strict=True)
    }
    everything = all(s.ready for s in services.values())
    body = GatewayHealth(status="ok" if everything else "degraded", services=services)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if everything else 503)


@router.get("/health", response_model=GatewayHealth, responses={503: {"model": GatewayHealth}})
async def health(clients: ClientsDep) -> JSONResponse:
    """Whether each service is ready (at least one of its replicas is), with each replica's state and the
    reason for any that is not (no internal addresses). 503 when a service has no ready replica."""
    return await _health(clients, internal=False)


@internal_router.get("/health", response_model=GatewayHealth, responses={503: {"model": GatewayHealth}})
async def internal_health(clients: ClientsDep) -> JSONResponse:
    """As /api/health, with each service's and each replica's URL and the reasons as given. Not passed on
    by the proxy."""
    return await _health(clients, internal=True)


@router.get("/info", response_model=Info)
async def info(clients: ClientsDep, settings: SettingsDep) -> Info:
    """The notice to show, the model in use (its checkpoint by file name only) and what the index holds (null
    parts are down)."""
    model, index = await asyncio.gather(
        clients.json_or_none("embedder", "/v1/model"), clients.json_or_none("search", "/v1/stats")
    )
    return Info(notice=settings.notice, model=public_model(model), index=index)
