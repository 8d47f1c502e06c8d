"""GET /v1/model: which model is loaded and how it runs."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.schemas.embedder import ModelInfo
from services.embedder.dependencies import EmbedderDep
from services.embedder.routes import ERRORS

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo, responses=ERRORS)
async def model_info(embedder: EmbedderDep) -> ModelInfo:
    """Which model is loaded, how images are prepared for it, and how it runs."""
    return embedder.info()
