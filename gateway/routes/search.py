"""POST /api/search: an uploaded photo (multipart) or a text (JSON) -> hits with taxonomy and links."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from gateway.dependencies import ClientsDep
from gateway.schemas import SearchParameters, SearchResult, TextSearchRequest
from gateway.views import hit_view
from services.common.errors import BadRequest, ErrorResponse
from services.common.schemas.search import SearchRequest

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["search"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "The photo to search with."},
        **{
            name: {"type": "string", "description": field.description}
            for name, field in SearchParameters.model_fields.items()
        },
    },
}
_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {"schema": TextSearchRequest.model_json_schema()},
        },
    }
}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 502, 503, 504)}


def _validated(model: type[SearchParameters], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


async def _image_query(request: Request, clients: ClientsDep) -> tuple[list[float], SearchParameters]:
    async with request.form() as form:
        return await _embed_upload(form, clients)


async def _embed_upload(form: FormData, clients: ClientsDep) -> tuple[list[float], SearchParameters]:
    uploads = [value for value in form.getlist("image") if isinstance(value, UploadFile)]
    if not uploads:
        raise BadRequest("attach the photo as the multipart field `image`", code="missing_image")
    params = _validated(SearchParameters, {k: v for k, v in form.items() if k != "image" and v != ""})
    upload = uploads[0]
    data = await upload.read()
    if not data:
        raise BadRequest("the uploaded file is empty", code="empty_file")
    embedded = await clients.embed_images(
        [(upload.filename or "upload", data, upload.content_type or "application/octet-stream")]
    )
    return embedded.vectors[0], params


@router.post(
    "/search", response_model=SearchResult, responses=ERRORS, openapi_extra=_BODIES, summary="Search the collection"
)
async def search(request: Request, clients: ClientsDep) -> SearchResult:
    """Nearest records to an uploaded photo (multipart field `image`) or to a text (JSON `text`).

    Parameters go as form fields beside the upload, or in the JSON body.
    """
    content_type = request.headers.get("content-type", "")
    text: str | None = None
    if content_type.startswith("multipart/form-data"):
        vector, params = await _image_query(request, clients)
        kind = "image"
    elif content_type.startswith("application/json"):
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise BadRequest("the body is not valid JSON", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object", code="invalid_json")
        params = _validated(TextSearchRequest, body)
        text = params.text.strip()
        if not text:
            raise BadRequest("the text is blank", code="empty_text")
        vector = (await clients.embed_texts([text])).vectors[0]
        kind = "text"
    else:
        raise BadRequest(
            "send a photo as multipart/form-data (field `image`) or a text as application/json",
            code="unsupported_media_type",
            status_code=415,
        )
    found = await clients.search(
        SearchRequest(vectors=[vector], top_n=params.top_n, nprobe=params.nprobe, scope=params.scope)
    )
    result = found.results[0]
    return SearchResult(
        query=kind,
        text=text,
        top_n=params.top_n,
        nprobe=found.nprobe,
        scope=params.scope,
        exhausted=result.exhausted,
        hits=[hit_view(hit) for hit in result.hits],
        took_ms=found.took_ms,
    )
