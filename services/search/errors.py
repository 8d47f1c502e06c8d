"""The search service's domain errors: what a search or a lookup can fail on, with no HTTP in them.

Vectors of the wrong length or without a direction are the shared `DimensionMismatch` and
`InvalidVector` (services/common/errors.py); the app maps all of these to statuses once.
"""

from __future__ import annotations

import logging

from services.common.errors import DependencyUnavailable, InvalidValue, NotFound, NotSupported

logger = logging.getLogger(__name__)


class UnknownRecord(NotFound):
    """No record (or no stored vector) has this id."""

    code = "unknown_record"


class NotReconstructable(NotSupported):
    """The index cannot give this vector back: its encoding does not decode, or it keeps no id -> list map."""

    code = "not_reconstructable"


class NoDirectMap(NotReconstructable):
    """An IVF index whose id -> list map is turned off, so no vector can be read back."""


class UnusableVector(InvalidValue):
    """The record's stored vector has no direction (NaN, infinity or all zeros): nothing can be searched from it."""

    code = "unusable_vector"

    def __init__(self, record_id: int, why: str) -> None:
        super().__init__(
            f"record {record_id}'s stored vector {why}: it cannot be searched from", details={"record_id": record_id}
        )


class MetadataUnavailable(DependencyUnavailable):
    """DuckDB could not answer a row lookup (out of its memory limit, an I/O error): hits cannot be named now.

    503 `metadata_unavailable`; out of memory is transient (other lookups end and free it), so it says when
    to try again."""

    code = "metadata_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__("metadata", message, retry_after=retry_after)
