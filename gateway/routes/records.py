"""GET /api/records/{id} and GET /api/images/{id}: a hit's metadata, and its image through the fetcher."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from gateway.dependencies import ClientsDep, ServedDep, limit_images
from gateway.schemas import RecordView
from gateway.views import record_view
from services.common.errors import NotFound
from services.common.http_errors import ErrorResponse
from services.common.vocabulary import ImageSize

router = APIRouter(prefix="/api", tags=["records"])

RecordId = Annotated[int, Path(ge=0, le=2**31 - 1, description="The record id of a hit.")]
ERRORS = {code: {"model": ErrorResponse} for code in (404, 422, 429, 502, 503, 504)}
# An image the fetcher may not fetch (its address is refused) or that is gone at its source.
IMAGE_ERRORS = {**ERRORS, **{code: {"model": ErrorResponse} for code in (403, 410)}}


@router.get("/records/{record_id}", response_model=RecordView, responses=ERRORS)
async def record(record_id: RecordId, clients: ClientsDep) -> RecordView:
    """One record's full metadata, with links to its image and its source."""
    return record_view(await clients.record(record_id))


IMAGE_RESPONSES = {
    200: {"content": {"image/webp": {}, "image/jpeg": {}}},
    304: {"description": "The browser's copy (If-None-Match) is still good."},
    **IMAGE_ERRORS,
}


@router.get(
    "/images/{record_id}", dependencies=[Depends(limit_images)], response_class=Response, responses=IMAGE_RESPONSES
)
@router.head(
    "/images/{record_id}",
    dependencies=[Depends(limit_images)],
    response_class=Response,
    responses=IMAGE_RESPONSES,
    operation_id="image_head",
    summary="Image headers",
)
async def image(
    record_id: RecordId,
    clients: ClientsDep,
    served: ServedDep,
    request: Request,
    size: Annotated[ImageSize, Query(description="thumb, medium or full.")] = "thumb",
) -> Response:
    """A record's image, fetched from its source by the fetcher. The browser never names a URL. HEAD answers
    the same status and headers (the image is fetched, and cached, all the same) without the bytes.

    The URL of a hit the gateway has just served is known without asking search, so images on
    screen keep loading while search is down or stalled.
    """
    url = served.url(record_id)
    if url is None:
        url = (await clients.record(record_id)).url
    if not url:
        raise NotFound(f"record {record_id} has no published image", code="no_image")
    image = await clients.image(url, size, request.headers.get("if-none-match"))
    if image.not_modified:
        return Response(status_code=304, headers=image.headers)
    return Response(image.data, media_type=image.media_type, headers=image.headers)
