"""The embedder's FastAPI app: the lifespan loads the model in the background; routers per resource.

The server answers /healthz at once and /readyz (503) while the model loads; embed and classify
routes answer 503 not_ready until it is loaded. A failed load logs one line naming the setting to
change, records it as `app.state.fatal_error` and stops the server (exit status 1 under `serve`).

This module and the routes import neither torch nor open_clip: those imports are most of a restart
(docs/benchmarks/reliability.md), so they run in the loading thread, after the server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from services.common.http_errors import Status, StatusTable
from services.common.service import BlockingPool, create_service_app
from services.embedder.errors import LabelsNotConfigured, ModelLoadError, one_line
from services.embedder.routes import classify, embed
from services.embedder.routes import model as model_info
from services.embedder.settings import EmbedderSettings

if TYPE_CHECKING:
    from services.embedder.labels import TreeOfLife
    from services.embedder.model import LoadedModel

logger = logging.getLogger(__name__)

# The embedder's errors beyond the shared kinds' statuses; the note names the setting an operator changes.
ERROR_STATUS: StatusTable = {LabelsNotConfigured: Status(503, note="EMBEDDER_TREE_OF_LIFE_DIR is unset")}


Loader = Callable[[EmbedderSettings], "tuple[LoadedModel, TreeOfLife | None]"]


def load_resources(settings: EmbedderSettings) -> tuple[LoadedModel, TreeOfLife | None]:
    """The engine's loader (services/embedder/engine.py), imported here: torch and open_clip load in this thread."""
    from services.embedder.engine import load_resources as load

    return load(settings)


async def _load(app: FastAPI, settings: EmbedderSettings, pool: BlockingPool, loader: Loader) -> None:
    try:
        model, tree = await pool.run(loader, settings)
    except ModelLoadError as exc:
        # The edge names each setting as operators set it: EMBEDDER_DEVICE, not `device`.
        _failed(app, exc.render(EmbedderSettings.env_name))
        return
    except Exception as exc:  # a bug or an unforeseen failure: still one line, the traceback at debug level
        logger.debug("model load failed", exc_info=True)
        _failed(app, f"could not load {settings.model}: {type(exc).__name__}: {one_line(exc)}")
        return
    from services.embedder.engine import Embedder  # already imported by the loader

    app.state.embedder = embedder = Embedder(model, tree, settings, pool.run)
    app.state.ready = True
    app.state.not_ready_reason = None
    try:
        await embedder.warm_up()
    except Exception:  # the first request would meet the same failure and answer it; here it is only logged
        logger.warning("the warm-up pass failed", exc_info=True)


def _failed(app: FastAPI, message: str) -> None:
    logger.error("start-up failed: %s", message)
    app.state.not_ready_reason = f"the model failed to load: {message}"
    app.state.fatal_error = message
    callback: Callable[[], None] | None = app.state.on_load_failure or app.state.stop_server
    if callback is not None:
        callback()


def create_app(
    settings: EmbedderSettings,
    *,
    on_load_failure: Callable[[], None] | None = None,
    loader: Loader = load_resources,
) -> FastAPI:
    """The app; `loader` (the model and labels, in a worker thread) runs after start-up, while /readyz says 503."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = pool = BlockingPool(settings.blocking_threads)
        app.state.embedder = None
        app.state.on_load_failure = on_load_failure
        app.state.not_ready_reason = "loading the model"
        loading = asyncio.create_task(_load(app, settings, pool, loader), name="load-model")
        yield
        app.state.ready = False
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        if app.state.embedder is not None:
            await app.state.embedder.close()

    app = create_service_app(
        "embedder",
        title="Embedder",
        version="0.2.0",
        lifespan=lifespan,
        max_body_bytes=settings.max_request_bytes,
        description="Images and texts to L2-normalised vectors with an open_clip model (BioCLIP-2 by default), "
        "and zero-shot taxon prediction.",
        errors=ERROR_STATUS,
    )

    app.include_router(embed.router)
    app.include_router(classify.router)
    app.include_router(model_info.router)
    return app
