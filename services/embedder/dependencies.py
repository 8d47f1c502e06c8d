"""Typed dependencies the embedder's routes take: the loaded embedder (503 not_ready until it is)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.errors import NotReady
from services.embedder.engine import Embedder


def get_embedder(request: Request) -> Embedder:
    embedder: Embedder | None = getattr(request.app.state, "embedder", None)
    if embedder is None:
        raise NotReady(f"the embedder is not ready: {request.app.state.not_ready_reason}")
    return embedder


EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
