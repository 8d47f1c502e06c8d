"""GET /v1/taxa: the collection's taxon names by prefix, for suggestions and for filters that match nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.common.http_errors import ErrorResponse
from services.common.schemas.search import FilterRank, TaxonSuggestion, TaxonSuggestions
from services.search.dependencies import TaxaDep

router = APIRouter(tags=["search"])

ERRORS = {422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
MAX_SUGGESTIONS = 50


@router.get("/v1/taxa", response_model=TaxonSuggestions, responses=ERRORS)
async def taxa(
    index: TaxaDep,
    prefix: Annotated[
        str, Query(max_length=200, description="The start of a name; case and accents' form do not matter.")
    ] = "",
    rank: Annotated[FilterRank | None, Query(description="Only names at this rank.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SUGGESTIONS, description="At most this many names.")] = 10,
) -> TaxonSuggestions:
    """The most frequent names starting with `prefix` (all ranks, or one); when none does, the nearest ones."""
    found = index.suggest(prefix, rank=rank, limit=limit)
    return TaxonSuggestions(
        taxa=[TaxonSuggestion(name=t.name, rank=t.rank, count=t.count) for t in found.taxa],  # type: ignore[arg-type]
        nearest=found.nearest,
    )
