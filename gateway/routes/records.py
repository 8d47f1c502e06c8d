"""GET /api/records/{id} and GET /api/images/{id}: a hit's metadata, and its image through the fetcher."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from gateway.dependencies import ClientsDep, limit_images
from gateway.schemas import RecordView
from gateway.views import record_view
from services.common.errors import NotFound
from services.common.http_errors import ErrorResponse
from services.common.vocabulary import ImageSize

router = APIRouter(prefix="/api", tags=["records"])

RecordId = Annotated[int, Path(ge=0, le=2**31 - 1, description="The record id of a hit.")]
ERRORS = {code: {"model": ErrorResponse} for code in (404, 422, 429, 502, 503, 504)}


@router.get("/records/{record_id}", response_model=RecordView, responses=ERRORS)
async def record(record_id: RecordId, clients: ClientsDep) -> RecordView:
    """One record's full metadata, with links to its image and its source."""
    return record_view(await clients.record(record_id))


@router.get(
    "/images/{record_id}",
    dependencies=[Depends(limit_images)],
    response_class=Response,
    responses={200: {"content": {"image/webp": {}, "image/jpeg": {}}}, **ERRORS},
)
async def image(
    record_id: RecordId,
    clients: ClientsDep,
    request: Request,
    size: Annotated[ImageSize, Query(description="thumb, medium or full.")] = "thumb",
) -> Response:
    """A record's image, fetched from its source by the fetcher. The browser never names a URL."""
    found = await clients.record(record_id)
    if not found.url:
        raise NotFound(f"record {record_id} has no published image", code="no_image")
    image = await clients.image(found.url, size, request.headers.get("if-none-match"))
    if image.not_modified:
        return Response(status_code=304, headers=image.headers)
    return Response(image.data, media_type=image.media_type, headers=image.headers)
