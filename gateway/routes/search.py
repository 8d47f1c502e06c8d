"""Searching: POST /api/search (a photo, several photos, a text, a record, or a known query id) and
GET /api/search (the same from a query string: permalinks and CSV/JSON export)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from gateway.clients import ServiceClients
from gateway.dependencies import ClientsDep, SearcherDep, UploadsDep, limit_searches
from gateway.export import Format, hits_csv, hits_json, negotiated, provenance
from gateway.query_cache import CachedQuery
from gateway.schemas import (
    QUERY_FIELDS,
    Export,
    QueryRequest,
    SearchLink,
    SearchParameters,
    SearchResult,
    TaxonFilter,
    one_query_message,
    search_form_schema,
)
from gateway.searching import Searcher, Upload
from services.common.errors import InvalidInput, UnsupportedMediaType
from services.common.http_errors import ErrorResponse, json_body
from services.common.vocabulary import clean

router = APIRouter(prefix="/api", tags=["search"], dependencies=[Depends(limit_searches)])

_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": search_form_schema()},
            "application/json": {"schema": {"$ref": "#/components/schemas/QueryRequest"}},
        },
    }
}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 410, 413, 415, 422, 429, 502, 503, 504)}
# A search answers JSON, or its hits as CSV when asked (`format=csv`, or `Accept: text/csv`).
RESPONSES = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "The result, or its hits as CSV."},
    **ERRORS,
}
# The gateway's own JSON body, named in _BODIES (the route reads the body itself: two content types).
SCHEMA_MODELS = (QueryRequest,)
# What a 422 says of a name no search takes (the app hands it to the shared error handler).
UNKNOWN = "not a parameter of this endpoint (GET /api/vocabulary lists the search parameters)"


def _validated(
    model: type[BaseModel], data: dict[str, Any], where: tuple[str, ...] = (), *, strict: bool = False
) -> Any:
    """`data` as `model`; strict for a JSON body (typed values), lax for form fields and query strings (text).
    `where` prefixes each error's location (`query` for a query string)."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        errors = [{**error, "loc": (*where, *error["loc"])} for error in exc.errors(include_url=False)]
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


_CHUNK = 1 << 20


async def _upload(item: UploadFile, n: int) -> Upload:
    """An uploaded file as it lies (Starlette spools it: memory up to 1 MB, then disk), read once
    in chunks for its digest and left rewound for the embedder."""
    digest, size = hashlib.sha256(), 0
    while chunk := await item.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    await item.seek(0)
    name = item.filename or f"photo {n + 1}"
    return Upload(name, item.file, size, digest.hexdigest(), item.content_type or "application/octet-stream")


async def _from_form(request: Request, searcher: Searcher) -> tuple[CachedQuery, SearchParameters]:
    # The files live as long as the form: the embedder reads them before it closes.
    async with request.form() as form:
        items = [item for item in form.getlist("image") if isinstance(item, UploadFile)]
        if not items:  # before the fields: a photo sent under another name is this mistake, not an unknown field
            raise InvalidInput("attach the photo as the multipart field `image`", code="missing_image")
        # The photos are the query: a text, record or query id beside them is a second one (one query per
        # search, as in JSON and in a query string), not a parameter. Blank, it is absent, as any blank field.
        given = [name for name in QUERY_FIELDS if clean(str(form.get(name) or ""))]
        if given:
            problem = one_query_message(("image", *QUERY_FIELDS), ["image", *given])
            raise RequestValidationError([{"type": "value_error", "loc": ("body", given[0]), "msg": problem}])
        params = _validated(SearchParameters, _fields(form, {"image", *QUERY_FIELDS}))
        uploads = [await _upload(item, n) for n, item in enumerate(items)]
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
async def search(request: Request, searcher: SearcherDep, clients: ClientsDep, uploads: UploadsDep) -> Response:
    """Nearest records to one or more uploaded photos (multipart field `image`, repeatable: several
    photos of one organism are averaged), or, as JSON, to a text, a record, or a query id from an
    earlier result (which is not embedded again). With `Accept: text/csv`, the hits as CSV.

    Uploads in flight are bounded (`GATEWAY_MAX_CONCURRENT_UPLOADS`): one more is refused with
    503 `too_many_uploads` and `Retry-After` before its body is read.
    """
    # POST takes its parameters in the body only: a query-string one would be silently ignored
    # (`?topn=5` searching with the default 24), so each is refused by name, as in the body.
    if request.query_params:
        extra = [{"type": "extra_forbidden", "loc": ("query", name), "msg": UNKNOWN} for name in request.query_params]
        raise RequestValidationError(extra)
    format = negotiated(request.headers.get("accept"))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        with uploads.hold():
            query, params = await _from_form(request, searcher)
        return await _answer(await searcher.run(query, params), format, clients)
    if content_type.startswith("application/json"):
        raw = json_body(await request.body())
        if not isinstance(raw, dict):
            raise InvalidInput("the JSON body must be an object", code="invalid_json")
        body = _validated(QueryRequest, raw, strict=True)
        return await _answer(await searcher.run(await _from_request(searcher, body), body), format, clients)
    raise UnsupportedMediaType(
        "send photos as multipart/form-data (field `image`) or a text, record_id or query_id as application/json"
    )


@router.get("/search", response_model=Export, responses=RESPONSES, summary="Search from a query string")
async def search_by_link(
    request: Request, searcher: SearcherDep, clients: ClientsDep, link: Annotated[SearchLink, Query()]
) -> Response:
    """The same search from a query string (what a permalink holds): `q`, `text` or `record`, the
    parameters of POST /api/search, and repeatable `filter=rank:value`. `format=csv` (or `Accept: text/csv`)
    exports the hits; both formats carry the export's provenance.
    """
    given = [name for name in ("q", "text", "record") if getattr(link, name) is not None]
    if len(given) > 1:
        problem = one_query_message(("q", "text", "record"), given)
        raise RequestValidationError([{"type": "value_error", "loc": ("query", given[1]), "msg": problem}])
    parameters = link.model_dump(include=set(SearchParameters.model_fields) - {"filters"}, exclude_none=True)
    query = {"query_id": link.q, "text": link.text, "record_id": link.record}
    body = _validated(QueryRequest, {**parameters, "filters": _filters(link.filter), **query}, ("query",))
    result = await searcher.run(await _from_request(searcher, body), body)
    chosen = link.format or negotiated(request.headers.get("accept"))
    return await _answer(result, chosen, clients, download=link.download, always_cite=True)
