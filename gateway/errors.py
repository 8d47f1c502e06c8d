"""The gateway's own domain errors, beside the shared kinds (services/common/errors.py). No HTTP here."""

from __future__ import annotations

import logging

from services.common.errors import DependencyFailed, Expired

logger = logging.getLogger(__name__)


class QueryExpired(Expired):
    """A query id the gateway no longer holds (it keeps recent queries only)."""

    code = "query_expired"


class ModelIndexMismatch(DependencyFailed):
    """The embedder's vectors do not fit the search index: the two were set up with different models."""

    code = "model_index_mismatch"

    def __init__(self, message: str) -> None:
        super().__init__("search", message)
