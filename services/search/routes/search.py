"""POST /v1/search: nearest records for query vectors."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from services.common.http_errors import ErrorResponse
from services.common.schemas.search import (
    Hit,
    QueryHits,
    QueryReport,
    Record,
    SearchRequest,
    SearchResponse,
    StageTimings,
)
from services.common.vocabulary import SearchParameters
from services.search.dependencies import EngineDep, PoolDep, SettingsDep
from services.search.engine import Query, SearchOutcome
from services.search.settings import SearchSettings

router = APIRouter(tags=["search"])

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def to_query(body: SearchRequest, settings: SearchSettings) -> Query:
    parameters = {name: getattr(body, name) for name in SearchParameters.model_fields}
    return Query(
        **{**parameters, "filters": tuple(body.filters), "nprobe": body.nprobe or settings.default_nprobe},
        vectors=np.asarray(body.vectors, dtype=np.float32),
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


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
async def search(body: SearchRequest, engine: EngineDep, pool: PoolDep, settings: SettingsDep) -> SearchResponse:
    """Nearest records for one or more query vectors, in rank order, filled to top_n within scope and filters."""
    return to_response(await pool.run(engine.search, to_query(body, settings)), body)
