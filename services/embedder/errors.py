"""The embedder's own domain errors, beside the shared kinds (services/common/errors.py). No HTTP here."""

from __future__ import annotations

import logging
import re

from services.common.errors import InvalidValue, Unavailable
from services.common.settings import ConfigurationError

logger = logging.getLogger(__name__)


class ModelLoadError(ConfigurationError):
    """The model could not be loaded; the message names the settings to change (see ConfigurationError)."""


def one_line(text: object, limit: int = 300) -> str:
    """An exception's text on one line (hub errors span several), cut to a readable length."""
    flat = re.sub(r"\s+", " ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class LabelsNotConfigured(Unavailable):
    """A prediction over the TreeOfLife labels was asked of an embedder that loaded none."""

    code = "labels_not_configured"


class UnknownClade(InvalidValue):
    """No label lies within the clade asked for."""

    code = "unknown_clade"


class InvalidClade(InvalidValue):
    """The clade is not above the rank predicted."""

    code = "invalid_clade"
