"""GET /api/examples: a few records of the collection to search from, for a first visit without a photo."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from gateway.dependencies import ClientsDep, SettingsDep
from gateway.schemas import RecordView
from gateway.views import record_view
from services.common.errors import NotFound
from services.common.http_errors import ErrorResponse

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["records"])

# Without configured examples, the first records with an image among ids below this are offered.
SCAN_IDS = 64


@router.get("/examples", response_model=list[RecordView], responses={503: {"model": ErrorResponse}})
async def examples(request: Request, clients: ClientsDep, settings: SettingsDep) -> list[RecordView]:
    """Records to try a search from (`GATEWAY_EXAMPLE_RECORDS`, or else the first ones with an image),
    each with its thumbnail; found once and kept for the process's life. Empty when none can be had."""
    kept: list[RecordView] | None = getattr(request.app.state, "examples", None)
    if kept is not None:
        return kept
    wanted = settings.example_records or list(range(SCAN_IDS))
    found: list[RecordView] = []
    for record_id in wanted:
        if len(found) >= settings.examples:
            break
        try:
            record = await clients.record(record_id)
        except NotFound:
            continue
        if record.url:
            found.append(record_view(record))
    request.app.state.examples = found
    return found
