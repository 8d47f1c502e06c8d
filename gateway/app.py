"""The gateway's FastAPI app: the page at /, the API under /api, one httpx client to the services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.admission import UploadSlots
from gateway.clients import ServiceClients
from gateway.errors import ModelIndexMismatch
from gateway.query_cache import QueryCache
from gateway.rate_limit import SlidingWindowLimiter
from gateway.replicas import ReplicaCollector
from gateway.routes import examples, health, previews, queries, records, search, taxa, vocabulary
from gateway.searching import Searcher
from gateway.security_headers import SecurityHeadersMiddleware
from gateway.served import ServedImages
from gateway.settings import GatewaySettings
from services.common.http import make_async_client
from services.common.http_errors import Status, StatusTable
from services.common.service import BlockingPool, create_service_app

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

# The gateway's errors beyond the shared kinds' statuses (QueryExpired is 410 as every Expired);
# the note names the setting an operator changes.
ERROR_STATUS: StatusTable = {ModelIndexMismatch: Status(502, note="set EMBEDDER_MODEL to that model")}


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_async_client(
            connect=settings.connect_timeout,
            read=settings.search_timeout,
            max_connections=settings.max_connections,
            user_agent=settings.user_agent,
        )
        app.state.settings = settings
        app.state.clients = clients = ServiceClients(client, settings)
        # The replicas behind the services' host names, before the first call; bounded, so a name that
        # does not resolve yet (its service still starting) does not hold the gateway's start-up.
        try:
            await asyncio.wait_for(clients.resolve(), timeout=settings.connect_timeout)
        except TimeoutError:
            logger.warning("resolving the services' host names took over %.0f s; going on", settings.connect_timeout)
        resolving = asyncio.create_task(clients.keep_resolving())
        app.state.served = ServedImages(settings.served_images)
        app.state.uploads = UploadSlots(settings.max_concurrent_uploads, retry_after=settings.shed_retry_after)
        app.state.searcher = Searcher(
            app.state.clients,
            QueryCache(settings.query_cache_size),
            max_images=settings.max_images_per_query,
            predictions=settings.predictions,
            served=app.state.served,
        )
        app.state.search_limiter = SlidingWindowLimiter(settings.searches_per_minute)
        app.state.image_limiter = SlidingWindowLimiter(settings.images_per_minute)
        app.state.preview_pool = BlockingPool(settings.max_concurrent_previews)
        app.state.ready = True
        try:
            async with client:
                yield
        finally:
            app.state.ready = False
            resolving.cancel()
            with suppress(asyncio.CancelledError):
                await resolving

    app = create_service_app(
        "gateway",
        title="BioCLIP image search",
        version="0.1.0",
        lifespan=lifespan,
        max_body_bytes=settings.max_upload_bytes,
        description="Search a labelled collection of organism photos by photo or by taxon name.",
        errors=ERROR_STATUS,
        schema_models=search.SCHEMA_MODELS,
        unknown_parameter=search.UNKNOWN,
    )
    app.state.metrics_registry.register(
        ReplicaCollector(lambda: clients.upstreams.values() if (clients := getattr(app.state, "clients", None)) else ())
    )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origin_list:  # outside the security headers, so a preflight is answered before them
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Content-Type", "X-Request-ID"],
            expose_headers=["Content-Disposition", "Retry-After", "X-Request-ID", "ETag"],
            max_age=600,
        )
    if settings.trusted_proxies:  # outermost: everything inside sees the client the proxy saw
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.include_router(search.router)
    app.include_router(records.router)
    app.include_router(previews.router)
    app.include_router(health.router)
    app.include_router(vocabulary.router)
    app.include_router(taxa.router)
    app.include_router(examples.router)
    app.include_router(queries.router)
    app.include_router(health.internal_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # The page lives at / and its files under /static, so /api paths never fall through to files.
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app
