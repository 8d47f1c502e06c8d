"""The fetcher's FastAPI app: the lifespan wires one guarded httpx client, the caches and the
politeness book; routers per resource."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.errors import DomainError
from services.common.http_errors import Status, StatusTable
from services.common.service import BlockingPool, create_service_app
from services.fetcher.budgets import BudgetStore
from services.fetcher.cache import DiskCache, MemoryCache
from services.fetcher.client import ImageFetcher
from services.fetcher.errors import FetchFailed
from services.fetcher.pipeline import ImagePipeline
from services.fetcher.policy import PolicyBook
from services.fetcher.routes import images, stats
from services.fetcher.safety import AddressGuard, Resolver
from services.fetcher.settings import FetcherSettings
from services.fetcher.stats import Ledger
from services.fetcher.transport import make_source_client

logger = logging.getLogger(__name__)


# Each status word's HTTP status: the one place the fetcher's errors meet HTTP.
FETCH_STATUS = {
    "bad_url": 400,
    "blocked": 403,
    "not_found": 404,
    "rate_limited": 429,
    # 429 rather than 503: the gateway passes a 4xx (and its Retry-After) through to the browser.
    "budget_exhausted": 429,
    "timeout": 504,
    "too_large": 502,
    "not_an_image": 502,
    "error": 502,
}


def fetch_status(exc: DomainError) -> int:
    return FETCH_STATUS.get(exc.code, 502)


ERROR_STATUS: StatusTable = {FetchFailed: Status(fetch_status)}


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
        errors=ERROR_STATUS,
    )

    app.state.settings = settings
    app.include_router(images.router)
    app.include_router(stats.router)
    return app
