"""GET /v1/image (one image, re-encoded) and POST /v1/images (many, each with its own status)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from services.common.http_errors import ErrorResponse
from services.common.schemas.fetcher import BatchRequest, BatchResponse, ImageSize
from services.fetcher.dependencies import PipelineDep, SettingsDep
from services.fetcher.pipeline import Served

router = APIRouter(tags=["images"])

ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 422, 429, 502, 504)}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison over a list of tags, or `*`."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def image_response(served: Served, if_none_match: str | None, max_age: int) -> Response:
    image = served.image
    headers = {"ETag": image.etag, "Cache-Control": f"public, max-age={max_age}", "X-Fetcher-Cache": served.cache}
    if etag_matches(if_none_match, image.etag):
        return Response(status_code=304, headers=headers)
    return Response(image.data, media_type=image.media_type, headers=headers)


@router.get(
    "/v1/image",
    responses={
        200: {"content": {"image/webp": {}, "image/jpeg": {}}},
        304: {"description": "Not modified"},
        **ERRORS,
    },
    response_class=Response,
)
async def image(
    url: Annotated[str, Query(min_length=8, max_length=2048, description="The image's source URL.")],
    pipeline: PipelineDep,
    settings: SettingsDep,
    size: Annotated[ImageSize, Query(description="thumb, medium or full.")] = "thumb",
    if_none_match: Annotated[str | None, Header(description="ETags the caller holds.")] = None,
) -> Response:
    """The image at `url`, re-encoded at the size asked for, or a JSON error with a status word."""
    served = await pipeline.image(url, size)
    return image_response(served, if_none_match, settings.browser_cache_seconds)


@router.post("/v1/images", response_model=BatchResponse, responses={422: {"model": ErrorResponse}})
async def images(body: BatchRequest, pipeline: PipelineDep) -> BatchResponse:
    """Many URLs at once, each answered with its own status (and, when asked, its bytes)."""
    return await pipeline.batch(body)
