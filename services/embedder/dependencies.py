"""Typed dependencies the embedder's routes take: the loaded embedder (503 not_ready until it is)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from services.common.errors import NotReady

if TYPE_CHECKING:  # the engine imports torch, which loads after the server starts (services/embedder/app.py)
    from services.embedder.engine import Embedder


def get_embedder(request: Request) -> Embedder:
    embedder: Embedder | None = getattr(request.app.state, "embedder", None)
    if embedder is None:
        raise NotReady(f"the embedder is not ready: {request.app.state.not_ready_reason}")
    return embedder


# A name FastAPI need not resolve: it passes a dependency's result on without validating it.
EmbedderDep = Annotated["Embedder", Depends(get_embedder)]
