"""The embedder's own domain errors, beside the shared kinds (services/common/errors.py). No HTTP here."""

from __future__ import annotations

import logging

from services.common.errors import InvalidValue, Unavailable

logger = logging.getLogger(__name__)


class LabelsNotConfigured(Unavailable):
    """A prediction over the TreeOfLife labels was asked of an embedder that loaded none."""

    code = "labels_not_configured"


class UnknownClade(InvalidValue):
    """No label lies within the clade asked for."""

    code = "unknown_clade"


class InvalidClade(InvalidValue):
    """The clade is not above the rank predicted."""

    code = "invalid_clade"
