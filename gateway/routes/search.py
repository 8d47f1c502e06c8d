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

from gateway.clients import ServiceClients
from gateway.dependencies import ClientsDep, SearcherDep, limit_searches
from gateway.export import Format, hits_csv, hits_json, negotiated, provenance
from gateway.query_cache import CachedQuery
from gateway.schemas import Export, QueryRequest, SearchParameters, SearchResult, TaxonFilter, one_query_message
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
# A search answers JSON, or its hits as CSV when asked (`format=csv`, or `Accept: text/csv`).
RESPONSES = {**ERRORS, 200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}}
UNKNOWN = "not a parameter of this endpoint (GET /api/vocabulary lists the search parameters)"


def _validated(model: type[BaseModel], data: dict[str, Any], where: tuple[str, ...] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**error, "loc": (*where, *error["loc"])} | ({"msg": UNKNOWN} if error["type"] == "extra_forbidden" else {})
            for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from exc


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
        uploads: list[Upload] = [
            (item.filename or f"photo {n + 1}", await item.read(), item.content_type or "application/octet-stream")
            for n, item in enumerate(form.getlist("image"))
            if isinstance(item, UploadFile)
        ]
        if not uploads:  # before the fields: a photo sent under another name is this mistake, not an unknown field
            raise InvalidInput("attach the photo as the multipart field `image`", code="missing_image")
        params = _validated(SearchParameters, _fields(form, {"image"}))
    return await searcher.image_query(uploads), params


async def _from_request(searcher: Searcher, body: QueryRequest) -> CachedQuery:
    if body.text is not None:
        return await searcher.text_query(body.text)
    if body.record_id is not None:
        return await searcher.record_query(body.record_id)
    assert body.query_id is not None  # the model checks that exactly one is given
    return await searcher.known_query(body.query_id)


async def _answer(
    result: SearchResult, format: Format, clients: ServiceClients, *, download: bool = False, always_cite: bool = False
) -> Response:
    """The result as JSON, or its hits as CSV; a CSV, a download and GET's `format=json` carry their
    provenance (query, model, collection, date) so that the file can be cited."""
    filename = f"bioclip-search-{result.query_id[:16]}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'} if download else {}
    if format == "csv":
        cited = provenance(result, await clients.provenance())
        return Response(hits_csv(result.hits, cited), media_type="text/csv; charset=utf-8", headers=headers)
    if download or always_cite:
        cited = provenance(result, await clients.provenance())
        return Response(hits_json(result, cited), media_type="application/json", headers=headers)
    return Response(result.model_dump_json(by_alias=True), media_type="application/json", headers=headers)


@router.post(
    "/search", response_model=SearchResult, responses=RESPONSES, openapi_extra=_BODIES, summary="Search the collection"
)
async def search(request: Request, searcher: SearcherDep, clients: ClientsDep) -> Response:
    """Nearest records to one or more uploaded photos (multipart field `image`, repeatable: several
    photos of one organism are averaged), or, as JSON, to a text, a record, or a query id from an
    earlier result (which is not embedded again). With `Accept: text/csv`, the hits as CSV.
    """
    format = negotiated(request.headers.get("accept"))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        query, params = await _from_form(request, searcher)
        return await _answer(await searcher.run(query, params), format, clients)
    if content_type.startswith("application/json"):
        try:
            raw = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise InvalidInput("the body is not valid JSON", code="invalid_json") from exc
        if not isinstance(raw, dict):
            raise InvalidInput("the JSON body must be an object", code="invalid_json")
        body = _validated(QueryRequest, raw)
        return await _answer(await searcher.run(await _from_request(searcher, body), body), format, clients)
    raise UnsupportedMediaType(
        "send photos as multipart/form-data (field `image`) or a text, record_id or query_id as application/json"
    )


@router.get("/search", response_model=Export, responses=RESPONSES, summary="Search from a query string")
async def search_by_link(
    request: Request,
    searcher: SearcherDep,
    clients: ClientsDep,
    q: Annotated[str | None, Query(description="A query id from an earlier result.")] = None,
    text: Annotated[str | None, Query(description="A taxon or common name.")] = None,
    record: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Search from this record.")] = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="json (the result, with its provenance) or csv (the hits). Default: by `Accept`, else json."),
    ] = None,
    download: Annotated[bool, Query(description="Answer as a file to save.")] = False,
) -> Response:
    """The same search from a query string (what a permalink holds): `q`, `text` or `record`, the
    parameters of POST /api/search, and repeatable `filter=rank:value`. `format=csv` (or `Accept: text/csv`)
    exports the hits; both formats carry the export's provenance.
    """
    given = [name for name, value in (("q", q), ("text", text), ("record", record)) if value is not None]
    if len(given) > 1:
        problem = one_query_message(("q", "text", "record"), given)
        raise RequestValidationError([{"type": "value_error", "loc": ("query", given[1]), "msg": problem}])
    fields = _fields(request.query_params, {"q", "text", "record", "format", "download", "model", "index"})
    body = _validated(QueryRequest, {**fields, "query_id": q, "text": text, "record_id": record}, ("query",))
    result = await searcher.run(await _from_request(searcher, body), body)
    chosen = format or negotiated(request.headers.get("accept"))
    return await _answer(result, chosen, clients, download=download, always_cite=True)
