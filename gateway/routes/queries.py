"""GET /api/queries/{query_id}/preview: the photo behind a query id, small, while the gateway holds it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from gateway.dependencies import SearcherDep
from gateway.errors import QueryExpired
from services.common.errors import NotFound
from services.common.http_errors import ErrorResponse

router = APIRouter(prefix="/api", tags=["search"])

QueryId = Annotated[str, Path(max_length=64, description="A query id from a search result (`query_id`).")]


@router.get(
    "/queries/{query_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **{code: {"model": ErrorResponse} for code in (404, 410, 422)}},
)
async def preview(query_id: QueryId, searcher: SearcherDep) -> Response:
    """A small JPEG of the query's first photo, so a permalink can show what was searched. 410 once the
    gateway no longer holds the query; 404 for a query that is not a photo."""
    cached = searcher.cache.get(query_id)
    if cached is None:
        raise QueryExpired("this query is no longer held by the gateway (it keeps recent queries only)")
    if cached.preview is None:
        raise NotFound("this query has no photo to preview", code="no_preview")
    return Response(cached.preview, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
