"""Typed dependencies the search service's routes take: the engine, the blocking pool, the settings."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends, Request

from services.common.errors import NotReady
from services.common.service import BlockingPool
from services.search.engine import SearchEngine
from services.search.errors import MetadataUnavailable
from services.search.settings import SearchSettings
from services.search.taxa import TaxaError, TaxonIndex


def get_engine(request: Request) -> SearchEngine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the index and metadata are not loaded yet")
    return engine


def get_taxa(request: Request) -> TaxonIndex:
    taxa = getattr(request.app.state, "taxa", None)
    if taxa is None:
        failed: TaxaError | None = getattr(request.app.state, "taxa_error", None)
        if failed is not None:
            # Loading failed: not "not ready", whose Retry-After a client would follow forever; a Retry-After only
            # while the service will try again.
            retry = None if failed.retry_at is None else max(1.0, math.ceil(failed.retry_at - time.monotonic()))
            raise MetadataUnavailable(failed.message, retry_after=retry)
        # `resource`: only the names are loading; the service searches (the gateway keeps the replica in).
        raise NotReady("the taxon names are not loaded yet", details={"resource": "taxon_names"})
    return taxa


def get_pool(request: Request) -> BlockingPool:
    return request.app.state.pool


def get_settings(request: Request) -> SearchSettings:
    return request.app.state.settings


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
PoolDep = Annotated[BlockingPool, Depends(get_pool)]
SettingsDep = Annotated[SearchSettings, Depends(get_settings)]
TaxaDep = Annotated[TaxonIndex, Depends(get_taxa)]
