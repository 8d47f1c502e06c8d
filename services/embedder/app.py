"""The embedder's FastAPI app: the lifespan loads the model in the background; routes stay thin.

The server answers /healthz at once and /readyz (503) while the model loads; embed and classify
routes answer 503 not_ready until it is loaded. A failed load logs one line naming the setting to
change, records it as `app.state.fatal_error` and stops the server (exit status 1 under `serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from services.common.errors import BadRequest, ErrorResponse, NotReady
from services.common.schemas.embedder import (
    ClassifyParameters,
    ClassifyRequest,
    ClassifyResponse,
    EmbedResponse,
    ModelInfo,
    TextEmbedRequest,
)
from services.common.service import BlockingPool, create_service_app
from services.embedder.engine import Embedder, load_resources
from services.embedder.labels import TreeOfLife
from services.embedder.model import LoadedModel, ModelLoadError, one_line
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}
_CLASSIFY_FORM = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Image files."},
        "rank": {"type": "string", "description": ClassifyParameters.model_fields["rank"].description},
        "k": {"type": "integer", "description": ClassifyParameters.model_fields["k"].description},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "Repeat the field, one label each."},
        "clade": {"type": "string", "description": 'A clade as "rank:name", e.g. "class:Insecta".'},
    },
}
_CLASSIFY_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ClassifyRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            },
            "multipart/form-data": {"schema": _CLASSIFY_FORM},
        },
    }
}


def get_embedder(request: Request) -> Embedder:
    embedder: Embedder | None = getattr(request.app.state, "embedder", None)
    if embedder is None:
        raise NotReady(f"the embedder is not ready: {request.app.state.not_ready_reason}")
    return embedder


EmbedderDep = Annotated[Embedder, Depends(get_embedder)]


def _validated(model: type[BaseModel], data: object) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


async def _read_uploads(uploads: list[Any]) -> list[tuple[str, bytes]]:
    files = [upload for upload in uploads if isinstance(upload, StarletteUpload)]
    return [(upload.filename or f"image {i + 1}", await upload.read()) for i, upload in enumerate(files)]


def _response(embedder: Embedder, vectors: np.ndarray) -> EmbedResponse:
    return EmbedResponse(
        model=embedder.model.name, dim=embedder.model.dim, count=len(vectors), vectors=vectors.tolist()
    )


Loader = Callable[[EmbedderSettings], tuple[LoadedModel, TreeOfLife | None]]


async def _load(app: FastAPI, settings: EmbedderSettings, pool: BlockingPool, loader: Loader) -> None:
    try:
        model, tree = await pool.run(loader, settings)
    except ModelLoadError as exc:
        _failed(app, str(exc))
        return
    except Exception as exc:  # a bug or an unforeseen failure: still one line, the traceback at debug level
        logger.debug("model load failed", exc_info=True)
        _failed(app, f"could not load {settings.model}: {type(exc).__name__}: {one_line(exc)}")
        return
    app.state.embedder = Embedder(model, tree, settings, pool.run)
    app.state.ready = True
    app.state.not_ready_reason = None


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
        if settings.torch_threads:
            # Threads made from here on (the pool's) start with this count.
            torch.set_num_threads(settings.torch_threads)
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
    )

    @app.post("/v1/embed/image", response_model=EmbedResponse, responses=ERRORS, tags=["embed"])
    async def embed_image(
        images: Annotated[list[UploadFile], File(description="One or more image files.")], embedder: EmbedderDep
    ) -> EmbedResponse:
        """One L2-normalised vector per uploaded image, in upload order."""
        return _response(embedder, await embedder.embed_images(await _read_uploads(images)))

    @app.post("/v1/embed/text", response_model=EmbedResponse, responses=ERRORS, tags=["embed"])
    async def embed_text(body: TextEmbedRequest, embedder: EmbedderDep) -> EmbedResponse:
        """One L2-normalised vector per text, through the model's text tower."""
        return _response(embedder, await embedder.embed_texts(body.texts))

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=ERRORS,
        openapi_extra=_CLASSIFY_BODIES,
        tags=["classify"],
    )
    async def classify(request: Request, embedder: EmbedderDep) -> ClassifyResponse:
        """Zero-shot taxon prediction for vectors (JSON `vector`/`vectors`) or images (multipart `images`).

        Labels: the TreeOfLife species (at any rank, optionally within a clade), or the request's `labels`.
        """
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                body = json.loads(await request.body() or b"null")
            except ValueError as exc:
                raise BadRequest("the body is not valid JSON", code="invalid_json") from exc
            params: ClassifyRequest = _validated(ClassifyRequest, body)
            return await embedder.classify_vectors(params, params.input_vectors())
        if content_type.startswith("multipart/form-data"):
            async with request.form() as form:
                uploads = await _read_uploads(form.getlist("images"))
                fields: dict[str, Any] = {key: value for key, value in form.items() if key not in ("images", "labels")}
                labels = [value for value in form.getlist("labels") if isinstance(value, str)]
            if not uploads:
                raise BadRequest("attach one or more images as the multipart field `images`", code="missing_image")
            form_params: ClassifyParameters = _validated(
                ClassifyParameters,
                {k: v for k, v in fields.items() if v != ""} | ({"labels": labels} if labels else {}),
            )
            return await embedder.classify_images(form_params, uploads)
        raise BadRequest(
            "send vectors as application/json or images as multipart/form-data (field `images`)",
            code="unsupported_media_type",
            status_code=415,
        )

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS, tags=["model"])
    async def model_info(embedder: EmbedderDep) -> ModelInfo:
        """Which model is loaded, how images are prepared for it, and how it runs."""
        return embedder.info()

    return app
