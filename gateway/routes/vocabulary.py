"""GET /api/vocabulary: the field's terms, defaults and bounds, so the page builds its controls from them."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from gateway.schemas import SearchParameters
from services.common.vocabulary import Vocabulary, vocabulary

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["operations"])

_DOCUMENT = vocabulary(SearchParameters)  # fixed for the process's life: made once


@router.get("/vocabulary", response_model=Vocabulary)
async def get_vocabulary() -> Vocabulary:
    """Ranks, filter ranks, scopes with their phrases, image sizes, why a search stops, and every search
    parameter's default and bounds (from the request model's JSON schema)."""
    return _DOCUMENT
