"""The search service's FastAPI app: the lifespan opens the index and the metadata once; routers per resource."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from services.common.http_errors import Status, StatusTable
from services.common.service import BlockingPool, create_service_app
from services.search.engine import SearchEngine
from services.search.errors import MetadataUnavailable, NoDirectMap
from services.search.index import VectorIndex
from services.search.lookup import open_lookup
from services.search.metadata import MetadataStore
from services.search.nearest import NearestIndex
from services.search.prefetch import prefetch
from services.search.routes import records, search, stats, taxa
from services.search.scale import ScaleUnavailable, measure_scale
from services.search.settings import SearchSettings
from services.search.taxa import TaxaError, TaxonIndex

logger = logging.getLogger(__name__)

# A transient failure to load the taxon names (DuckDB out of its memory limit) is tried again after this many
# seconds, doubling each time up to the maximum.
TAXA_RETRY_S = 5.0
TAXA_RETRY_MAX_S = 300.0
# The search errors' statuses beyond the shared kinds' (UnknownRecord 404, DimensionMismatch 422,
# NotReconstructable 501 come from theirs); the note names the setting an operator changes.
ERROR_STATUS: StatusTable = {NoDirectMap: Status(501, note="SEARCH_DIRECT_MAP=off")}


def open_index(settings: SearchSettings, metadata: MetadataStore) -> NearestIndex:
    """The one choice of what finds the nearest vectors (SEARCH_BACKEND), made here and never again."""
    if settings.backend == "milvus":
        from services.search.milvus import MilvusIndex

        token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
        return MilvusIndex.open(
            settings.resolved_milvus_uri, settings.milvus_collection, metadata=metadata.path, rows=metadata.rows,
            token=token, timeout=settings.milvus_timeout_s,
        )  # fmt: skip
    index = VectorIndex.open(settings.resolved_index_path, mmap=settings.mmap, direct_map=settings.direct_map)
    index.upgrade_quantizer(
        settings.coarse_quantizer,
        m=settings.quantizer_hnsw_m,
        ef_construction=settings.quantizer_ef_construction,
        cache_dir=settings.cache_dir,
    )
    return index


def open_engine(settings: SearchSettings) -> SearchEngine:
    metadata = MetadataStore(
        settings.resolved_metadata_path, threads=settings.duckdb_threads, memory_limit=settings.duckdb_memory_limit
    )
    try:
        index = open_index(settings, metadata)
        # The one choice of how candidates are judged, made here and never again.
        lookup = open_lookup(metadata, sidecar=settings.sidecar_path, use_sidecar=settings.use_sidecar)
    except BaseException:
        metadata.close()
        raise
    logger.info("candidates judged by %s", lookup.name)
    return SearchEngine(index, lookup, settings.limits())


def open_taxa(engine: SearchEngine) -> TaxonIndex:
    """Every taxon name of the collection, with counts (from the sidecar's codes, or a GROUP BY per rank)."""
    names = TaxonIndex.from_counts(engine.lookup.taxon_counts())
    logger.info("taxon names: %d", len(names))
    return names


async def load_taxa(app: FastAPI) -> None:
    """Load the taxon names in the pool; a transient failure (DuckDB out of memory) is tried again after
    TAXA_RETRY_S, doubling to TAXA_RETRY_MAX_S, and /v1/taxa says so with a Retry-After until it works."""
    delay = TAXA_RETRY_S
    while True:
        try:
            app.state.taxa = await app.state.pool.run(open_taxa, app.state.engine)
            app.state.taxa_error = None
            return
        except MetadataUnavailable as exc:  # interrupted at shutdown, or DuckDB failed: said once, no traceback
            stopping: threading.Event = app.state.stopping
            if stopping.is_set():
                return
            if exc.retry_after is None:
                logger.warning("the taxon names were not loaded: %s", exc.message)
                app.state.taxa_error = TaxaError(f"the taxon names could not be loaded: {exc.message}")
                return
            logger.warning("the taxon names were not loaded (%s); trying again in %.0f s", exc.message, delay)
            app.state.taxa_error = TaxaError(
                f"the taxon names could not be loaded ({exc.message}); the search service tries again",
                retry_at=time.monotonic() + delay,
            )
            # Waiting on the stop event itself: a shutdown ends the wait at once instead of sitting it out.
            if await asyncio.to_thread(stopping.wait, delay):
                return
            delay = min(2 * delay, TAXA_RETRY_MAX_S)
        except Exception:  # the service still searches; the suggestions stay unavailable and say so
            logger.exception("could not load the taxon names")
            app.state.taxa_error = TaxaError("the taxon names could not be loaded (see the search service's log)")
            return


async def load_scale(app: FastAPI, settings: SearchSettings) -> None:
    """Measure what a similarity means for this collection (services/search/scale.py); /v1/stats says it once
    measured, and says nothing while it is measured or when it cannot be."""
    engine: SearchEngine = app.state.engine
    try:
        measure = partial(
            measure_scale, engine.index, engine.lookup, samples=settings.similarity_scale_samples,
            nprobe=settings.default_nprobe, ef_search=settings.default_ef_search, stop=app.state.stopping,
        )  # fmt: skip
        app.state.similarity_scale = await app.state.pool.run(measure)
    except ScaleUnavailable as exc:
        logger.info("the similarity scale is not measured: %s", exc)
    except MetadataUnavailable as exc:
        logger.warning("the similarity scale is not measured: %s", exc.message)
    except Exception:  # the service still searches; the scale is informational
        logger.exception("could not measure the similarity scale")


def prefetch_files(settings: SearchSettings, engine: SearchEngine) -> list[Path]:
    """What SEARCH_PREFETCH reads: the index file when it is memory-mapped (else it is in RAM already), then with
    `all` the lookup's files."""
    files: list[Path] = []
    if settings.backend == "faiss" and settings.mmap:
        files.append(settings.resolved_index_path)
    if settings.prefetch == "all":
        files += engine.lookup.files()
    return files


async def load_prefetch(app: FastAPI, settings: SearchSettings) -> None:
    """Read the collection's files into the page cache (services/search/prefetch.py), in a thread of its own so
    that the searches' pool keeps every slot; a shutdown stops it within one chunk. A failure is logged: the
    service searches without it, and its shutdown (which awaits this) must not fail with it."""
    try:
        files = prefetch_files(settings, app.state.engine)
        if not files:
            logger.info("SEARCH_PREFETCH=%s: nothing to read (the index is in RAM, or no sidecar)", settings.prefetch)
            return
        done = await asyncio.to_thread(prefetch, files, stop=app.state.stopping)
    except Exception:
        logger.exception("could not prefetch the collection's files (SEARCH_PREFETCH=%s)", settings.prefetch)
        return
    how = "stopped after" if done.stopped else "read"
    logger.info(
        "page cache prefetch %s %.2f GB (%d of %d files) in %.1f s",
        how, done.bytes / 1e9, done.files, len(files), done.seconds,
    )  # fmt: skip


def create_app(settings: SearchSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = BlockingPool(settings.blocking_threads)
        app.state.stopping = threading.Event()
        app.state.engine = await app.state.pool.run(open_engine, settings)
        app.state.ready = True
        # The taxon names (seconds at a million species) load after the service is ready: searches need
        # them not, and /v1/taxa answers 503 not_ready until they are in.
        names = asyncio.create_task(load_taxa(app))
        background = [names]
        if settings.similarity_scale_samples:
            background.append(asyncio.create_task(load_scale(app, settings)))
        if settings.prefetch != "off":
            background.append(asyncio.create_task(load_prefetch(app, settings)))
        yield
        app.state.ready = False
        # A thread can't be killed, so the background work is told to stop (the scale checks the event between
        # lookups; DuckDB's running queries are interrupted) and then awaited before DuckDB is closed: without
        # this a SIGTERM waited out the taxon names' GROUP BYs, 43 s at 234M rows.
        app.state.stopping.set()
        app.state.engine.lookup.store.interrupt()
        await asyncio.gather(*background)
        app.state.engine.lookup.store.close()
        app.state.engine.index.close()

    app = create_service_app(
        "search",
        title="Search",
        version="0.2.0",
        lifespan=lifespan,
        max_body_bytes=settings.max_request_bytes,
        description="Nearest records for query vectors: a FAISS index (or a Milvus collection) plus DuckDB metadata.",
        errors=ERROR_STATUS,
    )
    app.state.settings = settings
    app.state.similarity_scale = None
    app.include_router(search.router)
    app.include_router(records.router)
    app.include_router(stats.router)
    app.include_router(taxa.router)
    return app
