"""GET /v1/stats: what the index and the metadata hold, and the bounds of a search."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.common.schemas.search import SearchStats
from services.search.dependencies import EngineDep, SettingsDep
from services.search.provenance import collection_pin

router = APIRouter(tags=["search"])


@router.get("/v1/stats", response_model=SearchStats)
async def stats(engine: EngineDep, settings: SettingsDep, request: Request) -> SearchStats:
    """What the index and the metadata hold, and the bounds of a search."""
    index = engine.index
    return SearchStats(
        backend=index.backend,
        index_type=index.kind,
        vectors=index.size,
        dim=index.dim,
        nlist=index.nlist,
        default_nprobe=index.clamp_nprobe(settings.default_nprobe),
        metric=index.metric,
        metadata_rows=engine.lookup.store.rows,
        url_layout=engine.lookup.store.url_layout,
        coarse_quantizer=index.coarse_quantizer,
        lookup=engine.lookup.name,
        reconstruct=index.reconstructs,
        max_candidates=engine.limits.max_candidates,
        max_nprobe=None if index.nlist is None else min(engine.limits.max_nprobe, index.nlist),
        collection=collection_pin(settings),
        similarity_scale=request.app.state.similarity_scale,
    )
