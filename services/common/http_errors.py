"""The one error shape of every service's HTTP answers, and the one mapping from domain errors to it.

Cores raise `DomainError`s (services/common/errors.py); each service's app passes a small table
of its own error classes to `install_error_handlers`, on top of `DEFAULT_STATUS`. A class's status
is that of its nearest listed ancestor, so a subclass needs a row only when its status differs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path

from services.common.errors import (
    DependencyFailed,
    DependencyTimeout,
    DependencyUnavailable,
    DomainError,
    Expired,
    Forbidden,
    InvalidInput,
    InvalidValue,
    NotFound,
    NotSupported,
    RateLimited,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    """What every non-2xx JSON answer of every service looks like."""

    error: ErrorBody


@dataclass(frozen=True)
class Status:
    """A mapping row with more than a number: a status chosen from the error (e.g. by its code word),
    and/or a note for operators appended to the message (the setting to change, which the core does not know)."""

    status: int | Callable[[DomainError], int]
    note: str | None = None


StatusTable: TypeAlias = Mapping[type[DomainError], "int | Status"]

DEFAULT_STATUS: dict[type[DomainError], int | Status] = {
    InvalidInput: 400,
    Forbidden: 403,
    NotFound: 404,
    Expired: 410,
    TooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidValue: 422,
    RateLimited: 429,
    NotSupported: 501,
    DependencyFailed: 502,
    Unavailable: 503,
    DependencyUnavailable: 503,
    DependencyTimeout: 504,
}

# The code word of an HTTP error raised by the framework itself (unknown path, wrong method, ...).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def json_body(data: bytes) -> Any:
    """A request body read by a route itself (one that also takes multipart), as JSON; empty is `None`.

    Raises `InvalidInput` (`invalid_json`) for what is not JSON, including nesting deeper than the parser's
    recursion limit, which the `json` module reports as `RecursionError`, not as `ValueError`.
    """
    try:
        return json.loads(data or b"null")
    except (ValueError, RecursionError) as exc:
        raise InvalidInput("the body is not valid JSON", code="invalid_json") from exc


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, at least 1: a client that comes back on time is not too early."""
    return str(max(1, math.ceil(seconds)))


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Any | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


def status_of(exc: DomainError, mapping: StatusTable) -> tuple[int, str | None]:
    """The HTTP status of `exc` (its nearest listed class; 500 when none is listed) and the row's note."""
    for cls in type(exc).__mro__:
        row = mapping.get(cls)  # type: ignore[call-overload]
        if row is None:
            continue
        if isinstance(row, int):
            return row, None
        status = row.status(exc) if callable(row.status) else row.status
        return status, row.note
    return 500, None


UNKNOWN_PARAMETER = "not a parameter of this endpoint"
"""What a 422 says of a name a model refuses (`extra="forbid"`): pydantic's own words name no endpoint."""


def _describe_validation(
    exc: RequestValidationError, unknown: str = UNKNOWN_PARAMETER
) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "request"
        problem = unknown if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        # A validator's own ValueError: pydantic prefixes its text with "Value error, "; the caller gets the text.
        raised = (err.get("ctx") or {}).get("error")
        if err.get("type") == "value_error" and isinstance(raised, ValueError) and str(raised):
            problem = str(raised)
        problems.append({"field": where, "problem": problem})
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
    return summary or "invalid request", problems


_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def allowed_methods(request: Request) -> list[str]:
    """Every method the app's published schema serves at the request's path, sorted (empty: a path outside it)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        regex, _, _ = compile_path(template)
        if regex.match(request.url.path):
            methods |= {method.upper() for method in operations if method in _METHODS}
    return sorted(methods)


def install_error_handlers(
    app: FastAPI, mapping: StatusTable | None = None, unknown_parameter: str = UNKNOWN_PARAMETER
) -> None:
    """Every exception leaves as the JSON error shape; a bug is a 500 without a traceback.

    `mapping`: the service's own error classes -> status, on top of `DEFAULT_STATUS`. `unknown_parameter`:
    the problem a 422 gives for a name the endpoint does not take (a service may say where its names are listed).
    """
    table: dict[type[DomainError], int | Status] = {**DEFAULT_STATUS, **(mapping or {})}

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        status, note = status_of(exc, table)
        message = f"{exc.message} ({note})" if note else exc.message
        if status >= 500:
            logger.warning("%s %s -> %s %s", request.method, request.url.path, status, message)
        headers = None if exc.retry_after is None else {"Retry-After": retry_after_header(exc.retry_after)}
        return error_response(status, exc.code, message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, problems = _describe_validation(exc, unknown_parameter)
        return error_response(422, "invalid_request", message, problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette answers from the first route whose path matched; a path served by several routes
            # (GET and POST /api/search) allows the methods of all of them (RFC 9110, 15.5.6).
            headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
            headers = {key: value for key, value in headers.items() if value}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went away while sending its body (a slow upload given up): nobody reads this
        # answer, and it is no fault of ours, so no traceback.
        logger.info("%s %s: the client disconnected before its request was read", request.method, request.url.path)
        return error_response(400, "client_disconnected", "the client disconnected before the request was read")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the service log has the details")
