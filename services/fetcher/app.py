"""The fetcher's FastAPI app: the lifespan wires one guarded httpx client, the caches and the
politeness book; the routes are thin."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import Response

from services.common.errors import ErrorResponse
from services.common.schemas.fetcher import BatchRequest, BatchResponse, FetcherStats, ImageSize
from services.common.service import BlockingPool, create_service_app
from services.fetcher.budgets import BudgetStore
from services.fetcher.cache import DiskCache, MemoryCache
from services.fetcher.client import ImageFetcher
from services.fetcher.pipeline import ImagePipeline, Served
from services.fetcher.policy import PolicyBook
from services.fetcher.safety import AddressGuard, Resolver
from services.fetcher.settings import FetcherSettings
from services.fetcher.stats import Ledger
from services.fetcher.transport import make_source_client

logger = logging.getLogger(__name__)

ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 422, 429, 502, 504)}


def get_pipeline(request: Request) -> ImagePipeline:
    return request.app.state.pipeline


PipelineDep = Annotated[ImagePipeline, Depends(get_pipeline)]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison over a list of tags, or `*`."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def image_response(served: Served, if_none_match: str | None, max_age: int) -> Response:
    image = served.image
    headers = {"ETag": image.etag, "Cache-Control": f"public, max-age={max_age}", "X-Fetcher-Cache": served.cache}
    if etag_matches(if_none_match, image.etag):
        return Response(status_code=304, headers=headers)
    return Response(image.data, media_type=image.media_type, headers=headers)


def create_app(settings: FetcherSettings, *, resolver: Resolver | None = None) -> FastAPI:
    """The fetcher. `resolver` answers host names (default: the system's); tests and benchmarks pass a table."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = BlockingPool(settings.blocking_threads)
        store = BudgetStore(settings.budget_store_path(), keep_seconds=0)
        book = PolicyBook(settings.domain_policies, store)
        store.keep_seconds = book.longest_window()
        try:
            book.restore(await store.open())
        except (OSError, sqlite3.Error) as exc:
            # Fail closed: domains with budgets are refused (their budget cannot be kept); others are served.
            logger.error("cannot keep the byte budgets at %s (%s): domains with budgets are refused", store.path, exc)
        disk = DiskCache(settings.cache_dir, settings.cache_max_bytes)
        await pool.run(disk.open)
        client = make_source_client(settings, AddressGuard(settings.allowed_networks(), resolver))
        fetcher = ImageFetcher(client, settings, book, Ledger(settings.recent_errors))
        pipeline = ImagePipeline(fetcher, MemoryCache(settings.memory_cache_bytes), disk, pool, settings)
        app.state.pipeline = pipeline
        app.state.ready = True
        async with client:
            try:
                yield
            finally:
                app.state.ready = False
                await pipeline.renders.cancel_all()
                await pipeline.downloads.cancel_all()
                await store.close()

    app = create_service_app(
        "fetcher",
        title="Fetcher",
        version="0.2.0",
        lifespan=lifespan,
        description="A hit's image fetched live from its source, politely and safely, re-encoded and cached.",
        max_body_bytes=1_000_000,
    )

    @app.get(
        "/v1/image",
        responses={
            200: {"content": {"image/webp": {}, "image/jpeg": {}}},
            304: {"description": "Not modified"},
            **ERRORS,
        },
        response_class=Response,
        tags=["images"],
    )
    async def image(
        url: Annotated[str, Query(min_length=8, max_length=2048, description="The image's source URL.")],
        pipeline: PipelineDep,
        size: Annotated[ImageSize, Query(description="thumb, medium or full.")] = "thumb",
        if_none_match: Annotated[str | None, Header(description="ETags the caller holds.")] = None,
    ) -> Response:
        """The image at `url`, re-encoded at the size asked for, or a JSON error with a status word."""
        served = await pipeline.image(url, size)
        return image_response(served, if_none_match, settings.browser_cache_seconds)

    @app.post("/v1/images", response_model=BatchResponse, responses={422: {"model": ErrorResponse}}, tags=["images"])
    async def images(body: BatchRequest, pipeline: PipelineDep) -> BatchResponse:
        """Many URLs at once, each answered with its own status (and, when asked, its bytes)."""
        return await pipeline.batch(body)

    @app.get("/v1/stats", response_model=FetcherStats, tags=["images"])
    async def stats(pipeline: PipelineDep) -> FetcherStats:
        """Per-domain requests and bytes over the last hour, in flight now, cache figures, recent errors."""
        return pipeline.stats()

    return app
