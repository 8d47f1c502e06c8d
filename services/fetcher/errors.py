"""The fetcher's one domain error: a status word saying why a source gave no image. No HTTP here:
the app maps each word to a status once (services/fetcher/app.py)."""

from __future__ import annotations

import logging
import math

from services.common.errors import DomainError

logger = logging.getLogger(__name__)


class FetchFailed(DomainError):
    """The source did not give us an image.

    `code`: a status word, as a batch item's `status`; `retry_after`: whole seconds, or None.
    """

    code = "error"

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        # Whole seconds, rounded up: a client that comes back on time is not too early.
        seconds = None if retry_after is None else max(1, math.ceil(retry_after))
        super().__init__(message, code=code, retry_after=seconds)
        self.retry_after: int | None = seconds
