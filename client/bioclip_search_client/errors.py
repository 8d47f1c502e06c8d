"""The API's error answers as one exception."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httpx

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A non-2xx answer of the API: `status` (HTTP), `code` (the API's stable word, e.g.
    `invalid_request`, `unknown_record`, `rate_limited`), `message` (for people), `details` (the
    validation problems as `{"field", "problem"}`, else empty) and `retry_after` (seconds, when given)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error of `response`, from the API's `{"error": {"code", "message", "details"}}` shape; any
        other body (a proxy's page) gives the code `http_<status>`."""
        code, message, details = f"http_{response.status_code}", response.reason_phrase, None
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
            details = error.get("details")
        retry_after: float | None = None
        with contextlib.suppress(KeyError, ValueError):
            retry_after = float(response.headers["retry-after"])
        return cls(response.status_code, code, message, details, retry_after)
