"""The search service's domain errors: what a search or a lookup can fail on, with no HTTP in them.

Vectors of the wrong length or without a direction are the shared `DimensionMismatch` and
`InvalidVector` (services/common/errors.py); the app maps all of these to statuses once.
"""

from __future__ import annotations

import logging

from services.common.errors import NotFound, NotSupported

logger = logging.getLogger(__name__)


class UnknownRecord(NotFound):
    """No record (or no stored vector) has this id."""

    code = "unknown_record"


class NotReconstructable(NotSupported):
    """The index cannot give this vector back: its encoding does not decode, or it keeps no id -> list map."""

    code = "not_reconstructable"


class NoDirectMap(NotReconstructable):
    """An IVF index whose id -> list map is turned off, so no vector can be read back."""
