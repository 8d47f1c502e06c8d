"""The gateway's own domain errors, beside the shared kinds (services/common/errors.py). No HTTP here."""

from __future__ import annotations

import logging

from services.common.errors import DependencyFailed, DependencyUnavailable, Expired, Unavailable

logger = logging.getLogger(__name__)


class QueryExpired(Expired):
    """A query id the gateway no longer holds (it keeps recent queries only)."""

    code = "query_expired"


class ModelIndexMismatch(DependencyFailed):
    """The embedder's vectors do not fit the search index: the two were set up with different models."""

    code = "model_index_mismatch"

    def __init__(self, message: str) -> None:
        super().__init__("search", message)


class ServiceBusy(DependencyUnavailable):
    """Shed: every call slot to `service` is taken and the queue for one is full, or a slot would not
    free up before the request's deadline. Nothing was sent; the same call may succeed after `retry_after`."""

    def __init__(self, service: str, message: str, *, retry_after: float) -> None:
        super().__init__(service, message, code=f"{service}_busy", retry_after=retry_after)


class TooManyUploads(Unavailable):
    """Shed: as many photo uploads are in flight as the gateway takes at once; nothing was read."""

    code = "too_many_uploads"
