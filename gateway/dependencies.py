"""Typed dependencies the gateway's routes take: the service clients, the searcher, the settings,
and the per-client rate limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.clients import ServiceClients
from gateway.rate_limit import SlidingWindowLimiter
from gateway.searching import Searcher
from gateway.settings import GatewaySettings
from services.common.errors import RateLimited


def get_clients(request: Request) -> ServiceClients:
    return request.app.state.clients


def get_searcher(request: Request) -> Searcher:
    return request.app.state.searcher


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


ClientsDep = Annotated[ServiceClients, Depends(get_clients)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]


def _client_key(request: Request) -> str:
    # Behind a trusted proxy, the address it saw (ProxyHeadersMiddleware, GATEWAY_TRUSTED_PROXIES);
    # never a header the client writes.
    return request.client.host if request.client else "unknown"


def _limit(request: Request, limiter: SlidingWindowLimiter, what: str) -> None:
    wait = limiter.check(_client_key(request))
    if wait > 0:
        raise RateLimited(f"too many {what} from this client: at most {limiter.per_minute} a minute", retry_after=wait)


def limit_searches(request: Request) -> None:
    _limit(request, request.app.state.search_limiter, "searches")


def limit_images(request: Request) -> None:
    _limit(request, request.app.state.image_limiter, "image requests")
