"""The search service's FastAPI app: lifespan opens the index and the metadata once; thin routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Path, Request

from services.common.errors import ErrorResponse, NotReady
from services.common.schemas.search import (
    Hit,
    QueryHits,
    QueryReport,
    Record,
    RecordVector,
    SearchRequest,
    SearchResponse,
    SearchStats,
    StageTimings,
)
from services.common.service import BlockingPool, create_service_app
from services.search.engine import Limits, Query, SearchEngine, SearchOutcome
from services.search.filters import TaxonFilter
from services.search.index import VectorIndex
from services.search.metadata import MetadataStore
from services.search.provenance import collection_pin
from services.search.settings import SearchSettings

logger = logging.getLogger(__name__)

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
VECTOR_ERRORS = {**ERRORS, 501: {"model": ErrorResponse}}
RecordId = Annotated[int, Path(ge=0, le=2**31 - 1)]


def get_engine(request: Request) -> SearchEngine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the index and metadata are not loaded yet")
    return engine


def get_pool(request: Request) -> BlockingPool:
    return request.app.state.pool


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
PoolDep = Annotated[BlockingPool, Depends(get_pool)]


def open_engine(settings: SearchSettings) -> SearchEngine:
    index = VectorIndex.open(settings.resolved_index_path, mmap=settings.mmap, direct_map=settings.direct_map)
    index.upgrade_quantizer(
        settings.coarse_quantizer,
        m=settings.quantizer_hnsw_m,
        ef_construction=settings.quantizer_ef_construction,
        cache_dir=settings.cache_dir,
    )
    metadata = MetadataStore(
        settings.resolved_metadata_path,
        threads=settings.duckdb_threads,
        memory_limit=settings.duckdb_memory_limit,
        sidecar=settings.sidecar_path,
        use_sidecar=settings.use_sidecar,
    )
    limits = Limits(
        max_candidates=settings.max_candidates,
        max_nprobe=settings.max_nprobe,
        max_rounds=settings.max_rounds,
        overfetch=settings.overfetch,
        default_ef_search=settings.default_ef_search,
    )
    return SearchEngine(index, metadata, limits)


def to_query(body: SearchRequest, settings: SearchSettings) -> Query:
    return Query(
        vectors=np.asarray(body.vectors, dtype=np.float32),
        top_n=body.top_n,
        nprobe=body.nprobe or settings.default_nprobe,
        scope=body.scope,
        filters=tuple(TaxonFilter(rank=f.rank, value=f.value) for f in body.filters),
        min_similarity=body.min_similarity,
        max_per_source=body.max_per_source,
        max_per_species=body.max_per_species,
        ef_search=body.ef_search,
    )


def to_response(outcome: SearchOutcome, body: SearchRequest) -> SearchResponse:
    return SearchResponse(
        results=[
            QueryHits(
                hits=[
                    Hit(rank=hit.rank, similarity=round(hit.similarity, 6), record=Record.model_validate(hit.row))
                    for hit in result.hits
                ],
                candidates=result.candidates,
                exhausted=result.exhausted,
                search=QueryReport(
                    candidates=result.candidates,
                    rounds=result.rounds,
                    nprobe=result.nprobe,
                    ef_search=result.ef_search,
                    stopped=result.stopped,
                ),
            )
            for result in outcome.results
        ],
        top_n=body.top_n,
        nprobe=outcome.nprobe,
        scope=body.scope,
        took_ms=round(outcome.took_ms, 3),
        timings=StageTimings(
            index_ms=round(outcome.timings.index_ms, 3),
            screen_ms=round(outcome.timings.screen_ms, 3),
            fetch_ms=round(outcome.timings.fetch_ms, 3),
        ),
    )


def create_app(settings: SearchSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = BlockingPool(settings.blocking_threads)
        app.state.engine = await app.state.pool.run(open_engine, settings)
        app.state.ready = True
        yield
        app.state.ready = False
        app.state.engine.metadata.close()

    app = create_service_app(
        "search",
        title="Search",
        version="0.2.0",
        lifespan=lifespan,
        max_body_bytes=settings.max_request_bytes,
        description="Nearest records for query vectors: a FAISS index plus DuckDB metadata.",
    )

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
    async def search(body: SearchRequest, engine: EngineDep, pool: PoolDep) -> SearchResponse:
        """Nearest records for one or more query vectors, in rank order, filled to top_n within scope and filters."""
        return to_response(await pool.run(engine.search, to_query(body, settings)), body)

    @app.get("/v1/records/{record_id}", response_model=Record, responses=ERRORS, tags=["records"])
    async def record(record_id: RecordId, engine: EngineDep, pool: PoolDep) -> Record:
        """One metadata row with its source URL."""
        return Record.model_validate(await pool.run(engine.record, record_id))

    @app.get("/v1/records/{record_id}/vector", response_model=RecordVector, responses=VECTOR_ERRORS, tags=["records"])
    async def vector(record_id: RecordId, engine: EngineDep, pool: PoolDep) -> RecordVector:
        """The record's vector as the index stores it (decoded: approximate for PQ codes)."""
        stored = await pool.run(engine.vector, record_id)
        return RecordVector(
            id=stored.id, dim=len(stored.vector), vector=stored.vector.tolist(), exact=stored.exact,
            encoding=stored.encoding,
        )  # fmt: skip

    @app.get("/v1/stats", response_model=SearchStats, tags=["search"])
    async def stats(engine: EngineDep) -> SearchStats:
        """What the index and the metadata hold, and the bounds of a search."""
        index = engine.index
        return SearchStats(
            index_type=index.kind,
            vectors=index.size,
            dim=index.dim,
            nlist=index.nlist,
            default_nprobe=index.clamp_nprobe(settings.default_nprobe),
            metric=index.metric,
            metadata_rows=engine.metadata.rows,
            url_layout=engine.metadata.url_layout,
            coarse_quantizer=index.coarse_quantizer,
            lookup=engine.metadata.lookup,
            reconstruct=index.reconstructs,
            max_candidates=engine.limits.max_candidates,
            max_nprobe=None if index.nlist is None else min(engine.limits.max_nprobe, index.nlist),
            collection=collection_pin(settings),
        )

    return app
