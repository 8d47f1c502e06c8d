"""POST /api/preview: a JPEG the browser can show of a photo it cannot (the page asks only then)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import Response

from gateway.dependencies import SettingsDep, limit_images
from gateway.previews import preview_jpeg
from services.common.http_errors import ErrorResponse
from services.common.images import InvalidImage

router = APIRouter(prefix="/api", tags=["previews"])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 422, 429)}


@router.post(
    "/preview",
    dependencies=[Depends(limit_images)],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
)
async def preview(
    image: Annotated[UploadFile, File(description="One photo, in any accepted format.")],
    settings: SettingsDep,
    request: Request,
) -> Response:
    """The photo as a JPEG of at most GATEWAY_PREVIEW_PIXELS on its longest side; nothing is kept."""
    data = await image.read()
    name = image.filename or "upload"
    try:
        jpeg = await request.app.state.preview_pool.run(
            lambda: preview_jpeg(data, name, longest_side=settings.preview_pixels, max_pixels=settings.max_image_pixels)
        )
    except InvalidImage as exc:
        raise exc.as_domain_error() from exc
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
