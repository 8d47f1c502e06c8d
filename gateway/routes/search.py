"""Searching: POST /api/search (a photo, several photos, a text, a record, or a known query id) and
GET /api/search (the same from a query string: permalinks and CSV/JSON export)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from gateway.dependencies import SearcherDep, limit_searches
from gateway.export import hits_csv, hits_json
from gateway.query_cache import CachedQuery
from gateway.schemas import QueryRequest, SearchParameters, SearchResult, TaxonFilter
from gateway.searching import Searcher, Upload
from services.common.errors import InvalidInput, UnsupportedMediaType
from services.common.http_errors import ErrorResponse

router = APIRouter(prefix="/api", tags=["search"], dependencies=[Depends(limit_searches)])

_FORM_FIELDS = {
    "image": {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "One or more photos of one organism.",
    },
    "filter": {
        "type": "array",
        "items": {"type": "string"},
        "description": "Taxon filters as rank:value, e.g. order:Lepidoptera.",
    },
    **{
        name: {"type": "string", "description": field.description}
        for name, field in SearchParameters.model_fields.items()
        if name != "filters"
    },
}
_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": _FORM_FIELDS}},
            "application/json": {"schema": QueryRequest.model_json_schema(ref_template="#/$defs/{model}")},
        },
    }
}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 410, 413, 415, 422, 429, 502, 503, 504)}


def _validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def _filters(texts: list[str]) -> list[TaxonFilter]:
    try:
        return [TaxonFilter.parse(text) for text in texts if text.strip()]
    except ValidationError as exc:
        errors = [{**error, "loc": ("filter", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


def _fields(pairs: FormData | Any, skip: set[str]) -> dict[str, Any]:
    """Form or query-string fields as model input: repeated `filter`s parsed, blanks dropped."""
    data: dict[str, Any] = {k: v for k, v in pairs.items() if k not in skip | {"filter"} and v != ""}
    data["filters"] = _filters([str(v) for v in pairs.getlist("filter")])
    return data


async def _from_form(request: Request, searcher: Searcher) -> tuple[CachedQuery, SearchParameters]:
    async with request.form() as form:
        params = _validated(SearchParameters, _fields(form, {"image"}))
        uploads: list[Upload] = [
            (item.filename or f"photo {n + 1}", await item.read(), item.content_type or "application/octet-stream")
            for n, item in enumerate(form.getlist("image"))
            if isinstance(item, UploadFile)
        ]
    return await searcher.image_query(uploads), params


async def _from_request(searcher: Searcher, body: QueryRequest) -> CachedQuery:
    if body.text is not None:
        return await searcher.text_query(body.text)
    if body.record_id is not None:
        return await searcher.record_query(body.record_id)
    assert body.query_id is not None  # the model checks that exactly one is given
    return await searcher.known_query(body.query_id)


@router.post(
    "/search", response_model=SearchResult, responses=ERRORS, openapi_extra=_BODIES, summary="Search the collection"
)
async def search(request: Request, searcher: SearcherDep) -> SearchResult:
    """Nearest records to one or more uploaded photos (multipart field `image`, repeatable: several
    photos of one organism are averaged), or, as JSON, to a text, a record, or a query id from an
    earlier result (which is not embedded again).
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        query, params = await _from_form(request, searcher)
        return await searcher.run(query, params)
    if content_type.startswith("application/json"):
        try:
            raw = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise InvalidInput("the body is not valid JSON", code="invalid_json") from exc
        if not isinstance(raw, dict):
            raise InvalidInput("the JSON body must be an object", code="invalid_json")
        body = _validated(QueryRequest, raw)
        return await searcher.run(await _from_request(searcher, body), body)
    raise UnsupportedMediaType(
        "send photos as multipart/form-data (field `image`) or a text, record_id or query_id as application/json"
    )


@router.get("/search", response_model=SearchResult, responses=ERRORS, summary="Search from a query string")
async def search_by_link(
    request: Request,
    searcher: SearcherDep,
    q: Annotated[str | None, Query(description="A query id from an earlier result.")] = None,
    text: Annotated[str | None, Query(description="A taxon or common name.")] = None,
    record: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Search from this record.")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="json (the result) or csv (the hits).")] = "json",
    download: Annotated[bool, Query(description="Answer as a file to save.")] = False,
) -> Response:
    """The same search from a query string (what a permalink holds): `q`, `text` or `record`, the
    parameters of POST /api/search, and repeatable `filter=rank:value`. `format=csv` exports the hits.
    """
    fields = _fields(request.query_params, {"q", "text", "record", "format", "download", "model", "index"})
    body = _validated(QueryRequest, {**fields, "query_id": q, "text": text, "record_id": record})
    result = await searcher.run(await _from_request(searcher, body), body)
    filename = f"bioclip-search-{result.query_id[:16]}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'} if download else {}
    if format == "csv":
        return Response(hits_csv(result.hits), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(hits_json(result), media_type="application/json", headers=headers)
