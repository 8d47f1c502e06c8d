"""The fetcher's status words and the one place they are given an HTTP status."""

from __future__ import annotations

import math

from services.common.errors import ServiceError

HTTP_STATUS = {
    "bad_url": 400,
    "blocked": 403,
    "not_found": 404,
    "rate_limited": 429,
    # 429 rather than 503: the gateway passes a 4xx (and its Retry-After) through to the browser.
    "budget_exhausted": 429,
    "timeout": 504,
    "too_large": 502,
    "not_an_image": 502,
    "error": 502,
}


class FetchFailed(ServiceError):
    """The source did not give us an image. `code` is one of the status words above."""

    status_code = 502
    code = "error"

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        headers = None
        if retry_after is not None:
            # Whole seconds, rounded up: a client that comes back on time is not too early.
            retry_after = max(1, math.ceil(retry_after))
            headers = {"Retry-After": str(retry_after)}
        super().__init__(message, code=code, status_code=HTTP_STATUS.get(code, 502), headers=headers)
        self.retry_after: int | None = retry_after
