"""The embedder's routes, one router per resource: embeddings, classification, the model."""

from __future__ import annotations

from typing import Any

from services.common.http_errors import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}
