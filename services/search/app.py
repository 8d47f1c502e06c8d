"""The search service's FastAPI app: the lifespan opens the index and the metadata once; routers per resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.http_errors import Status, StatusTable
from services.common.service import BlockingPool, create_service_app
from services.search.engine import SearchEngine
from services.search.errors import NoDirectMap
from services.search.index import VectorIndex
from services.search.lookup import open_lookup
from services.search.metadata import MetadataStore
from services.search.routes import records, search, stats
from services.search.settings import SearchSettings

logger = logging.getLogger(__name__)

# The search errors' statuses beyond the shared kinds' (UnknownRecord 404, DimensionMismatch 422,
# NotReconstructable 501 come from theirs); the note names the setting an operator changes.
ERROR_STATUS: StatusTable = {NoDirectMap: Status(501, note="SEARCH_DIRECT_MAP=off")}


def open_engine(settings: SearchSettings) -> SearchEngine:
    index = VectorIndex.open(settings.resolved_index_path, mmap=settings.mmap, direct_map=settings.direct_map)
    index.upgrade_quantizer(
        settings.coarse_quantizer,
        m=settings.quantizer_hnsw_m,
        ef_construction=settings.quantizer_ef_construction,
        cache_dir=settings.cache_dir,
    )
    metadata = MetadataStore(
        settings.resolved_metadata_path, threads=settings.duckdb_threads, memory_limit=settings.duckdb_memory_limit
    )
    # The one choice of how candidates are judged, made here and never again.
    lookup = open_lookup(metadata, sidecar=settings.sidecar_path, use_sidecar=settings.use_sidecar)
    logger.info("candidates judged by %s", lookup.name)
    return SearchEngine(index, lookup, settings.limits())


def create_app(settings: SearchSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = BlockingPool(settings.blocking_threads)
        app.state.engine = await app.state.pool.run(open_engine, settings)
        app.state.ready = True
        yield
        app.state.ready = False
        app.state.engine.lookup.store.close()

    app = create_service_app(
        "search",
        title="Search",
        version="0.2.0",
        lifespan=lifespan,
        max_body_bytes=settings.max_request_bytes,
        description="Nearest records for query vectors: a FAISS index plus DuckDB metadata.",
        errors=ERROR_STATUS,
    )
    app.state.settings = settings
    app.include_router(search.router)
    app.include_router(records.router)
    app.include_router(stats.router)
    return app
