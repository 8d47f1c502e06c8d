"""POST /v1/classify: zero-shot taxon prediction for vectors (JSON) or images (multipart)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from services.common.errors import InvalidInput, UnsupportedMediaType
from services.common.http_errors import json_body
from services.common.schemas.embedder import ClassifyParameters, ClassifyRequest, ClassifyResponse
from services.embedder.dependencies import EmbedderDep
from services.embedder.routes import ERRORS
from services.embedder.routes.embed import read_uploads

router = APIRouter(tags=["classify"])

_CLASSIFY_FORM = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Image files."},
        "rank": {"type": "string", "description": ClassifyParameters.model_fields["rank"].description},
        "k": {"type": "integer", "description": ClassifyParameters.model_fields["k"].description},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "Repeat the field, one label each."},
        "clade": {"type": "string", "description": 'A clade as "rank:name", e.g. "class:Insecta".'},
    },
}
# The route reads its body itself (JSON or multipart), so OpenAPI is told both shapes here.
_CLASSIFY_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ClassifyRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            },
            "multipart/form-data": {"schema": _CLASSIFY_FORM},
        },
    }
}


def _validated(model: type[BaseModel], data: object) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=_CLASSIFY_BODIES)
async def classify(request: Request, embedder: EmbedderDep) -> ClassifyResponse:
    """Zero-shot taxon prediction for vectors (JSON `vector`/`vectors`) or images (multipart `images`).

    Labels: the TreeOfLife species (at any rank, optionally within a clade), or the request's `labels`.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = json_body(await request.body())
        params: ClassifyRequest = _validated(ClassifyRequest, body)
        return await embedder.classify_vectors(params, params.input_vectors())
    if content_type.startswith("multipart/form-data"):
        async with request.form() as form:
            uploads = await read_uploads(form.getlist("images"))
            fields: dict[str, Any] = {key: value for key, value in form.items() if key not in ("images", "labels")}
            labels = [value for value in form.getlist("labels") if isinstance(value, str)]
        if not uploads:
            raise InvalidInput("attach one or more images as the multipart field `images`", code="missing_image")
        form_params: ClassifyParameters = _validated(
            ClassifyParameters,
            {k: v for k, v in fields.items() if v != ""} | ({"labels": labels} if labels else {}),
        )
        return await embedder.classify_images(form_params, uploads)
    raise UnsupportedMediaType("send vectors as application/json or images as multipart/form-data (field `images`)")
