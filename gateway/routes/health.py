"""GET /api/health and GET /api/info: how the gateway and each service are doing, and what is loaded."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.dependencies import ClientsDep, SettingsDep
from gateway.schemas import GatewayHealth, Info, ServiceHealth

router = APIRouter(prefix="/api", tags=["operations"])

SERVICES = ("embedder", "search", "fetcher")


@router.get("/health", response_model=GatewayHealth, responses={503: {"model": GatewayHealth}})
async def health(clients: ClientsDep) -> JSONResponse:
    """The gateway and each service, with the reason for any that is not ready. 503 when one is not."""
    answers = await asyncio.gather(*(clients.readiness(name) for name in SERVICES))
    services = {
        name: ServiceHealth(ready=ready, url=clients.urls[name], reason=reason)
        for name, (ready, reason) in zip(SERVICES, answers, strict=True)
    }
    everything = all(s.ready for s in services.values())
    body = GatewayHealth(status="ok" if everything else "degraded", services=services)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if everything else 503)


@router.get("/info", response_model=Info)
async def info(clients: ClientsDep, settings: SettingsDep) -> Info:
    """The notice to show, the model in use and what the index holds (null parts are down)."""
    model, index = await asyncio.gather(
        clients.json_or_none("embedder", "/v1/model"), clients.json_or_none("search", "/v1/stats")
    )
    return Info(notice=settings.notice, model=model, index=index)
