"""GET /v1/stats: what the fetcher has done lately."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.schemas.fetcher import FetcherStats
from services.fetcher.dependencies import PipelineDep

router = APIRouter(tags=["images"])


@router.get("/v1/stats", response_model=FetcherStats)
async def stats(pipeline: PipelineDep) -> FetcherStats:
    """Per-domain requests and bytes over the last hour, in flight now, cache figures, recent errors."""
    return pipeline.stats()
