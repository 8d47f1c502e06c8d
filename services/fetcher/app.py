"""The fetcher's FastAPI app: one shared httpx client for every source; thin routes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response

from services.common.errors import ErrorResponse
from services.common.http import make_async_client
from services.common.images import InvalidImage
from services.common.schemas.fetcher import FetcherStats, ImageSize
from services.common.service import BlockingPool, create_service_app
from services.fetcher.client import ImageFetcher, refusal
from services.fetcher.settings import FetcherSettings
from services.fetcher.thumbnails import render

logger = logging.getLogger(__name__)

ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 422, 429, 502, 504)}


def get_fetcher(request: Request) -> ImageFetcher:
    return request.app.state.fetcher


def get_pool(request: Request) -> BlockingPool:
    return request.app.state.pool


FetcherDep = Annotated[ImageFetcher, Depends(get_fetcher)]
PoolDep = Annotated[BlockingPool, Depends(get_pool)]


def create_app(settings: FetcherSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_async_client(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            max_connections=settings.max_connections,
            user_agent=settings.user_agent,
            follow_redirects=True,
            forward_request_id=False,
        )
        app.state.pool = BlockingPool(settings.blocking_threads)
        app.state.fetcher = ImageFetcher(client, settings)
        app.state.ready = True
        async with client:
            yield
        app.state.ready = False

    app = create_service_app(
        "fetcher",
        title="Fetcher",
        version="0.1.0",
        lifespan=lifespan,
        description="A hit's image fetched live from its source, re-encoded as a thumbnail or whole.",
    )
    sizes = {"thumb": settings.thumb_pixels, "medium": settings.medium_pixels, "full": None}

    @app.get(
        "/v1/image",
        responses={200: {"content": {"image/webp": {}, "image/jpeg": {}}}, **ERRORS},
        response_class=Response,
        tags=["images"],
    )
    async def image(
        url: Annotated[str, Query(min_length=8, max_length=2048, description="The image's source URL.")],
        fetcher: FetcherDep,
        pool: PoolDep,
        request: Request,
        size: Annotated[ImageSize, Query(description="thumb, medium or full.")] = "thumb",
    ) -> Response:
        """The image at `url`, re-encoded at the size asked for, or a JSON error with a status word."""
        fetched = await fetcher.fetch(url)
        try:
            rendered = await pool.run(
                lambda: render(
                    fetched.data,
                    longest_side=sizes[size],
                    image_format=settings.thumb_format,
                    max_pixels=settings.max_image_pixels,
                )
            )
        except InvalidImage as exc:
            code = "too_large" if exc.code == "image_too_large" else "not_an_image"
            raise refusal(code, f"the source did not send a usable image: {exc.message}") from exc
        etag = '"' + hashlib.sha256(rendered.data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={settings.browser_cache_seconds}"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(rendered.data, media_type=rendered.media_type, headers=headers)

    @app.get("/v1/stats", response_model=FetcherStats, tags=["images"])
    async def stats(fetcher: FetcherDep) -> FetcherStats:
        """Requests, bytes and errors per source domain over the last hour."""
        return fetcher.ledger.snapshot()

    return app
