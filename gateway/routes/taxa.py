"""GET /api/taxa: taxon names the collection holds, by prefix, for the page's suggestions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.dependencies import ClientsDep
from services.common.http_errors import ErrorResponse
from services.common.schemas.search import FilterRank, TaxonSuggestions

router = APIRouter(prefix="/api", tags=["search"])

ERRORS = {code: {"model": ErrorResponse} for code in (422, 502, 503, 504)}


@router.get("/taxa", response_model=TaxonSuggestions, responses=ERRORS, summary="Suggest taxon names")
async def taxa(
    clients: ClientsDep,
    prefix: Annotated[str, Query(max_length=200, description="The start of a scientific or common name.")] = "",
    rank: Annotated[FilterRank | None, Query(description="Only names at this rank.")] = None,
    limit: Annotated[int, Query(ge=1, le=50, description="At most this many names.")] = 10,
) -> TaxonSuggestions:
    """Scientific and common names from the collection starting with `prefix` (case and accents' form do not
    matter), most frequent first, with their rank and record count; `nearest` is true when none starts with
    it and these are the closest names. A name at `species` is genus and epithet: a `species:` filter takes it.
    """
    return await clients.taxa(prefix, rank, limit)
