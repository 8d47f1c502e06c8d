"""The embedder's FastAPI app: lifespan loads the model once; routes stay thin."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Request, UploadFile

from services.common.errors import BadRequest, ErrorResponse, NotReady, Unprocessable
from services.common.images import InvalidImage, decode_image
from services.common.schemas.embedder import EmbedResponse, ModelInfo, TextEmbedRequest
from services.common.service import BlockingPool, create_service_app
from services.embedder.model import LoadedModel, describe_transform, load_model
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

ERRORS = {
    400: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


def get_model(request: Request) -> LoadedModel:
    model = getattr(request.app.state, "model", None)
    if model is None:
        raise NotReady("the model is not loaded yet")
    return model


def get_pool(request: Request) -> BlockingPool:
    return request.app.state.pool


def get_settings(request: Request) -> EmbedderSettings:
    return request.app.state.settings


ModelDep = Annotated[LoadedModel, Depends(get_model)]
PoolDep = Annotated[BlockingPool, Depends(get_pool)]
SettingsDep = Annotated[EmbedderSettings, Depends(get_settings)]


def _response(model: LoadedModel, vectors: np.ndarray) -> EmbedResponse:
    return EmbedResponse(model=model.name, dim=model.dim, count=len(vectors), vectors=vectors.tolist())


def create_app(settings: EmbedderSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = BlockingPool(settings.blocking_threads)
        app.state.model = await app.state.pool.run(load_model, settings)
        app.state.ready = True
        yield
        app.state.ready = False

    app = create_service_app(
        "embedder",
        title="Embedder",
        version="0.1.0",
        lifespan=lifespan,
        max_body_bytes=settings.max_request_bytes,
        description="Images and texts to L2-normalised vectors with an open_clip model (BioCLIP-2 by default).",
    )

    @app.post("/v1/embed/image", response_model=EmbedResponse, responses=ERRORS, tags=["embed"])
    async def embed_image(
        images: Annotated[list[UploadFile], File(description="One or more image files.")],
        model: ModelDep,
        pool: PoolDep,
        config: SettingsDep,
    ) -> EmbedResponse:
        """One L2-normalised vector per uploaded image, in upload order."""
        if len(images) > config.max_images_per_request:
            raise BadRequest(
                f"{len(images)} images in one request; the limit is {config.max_images_per_request}",
                code="too_many_images",
            )
        decoded = []
        for index, upload in enumerate(images):
            data = await upload.read()
            name = upload.filename or f"image {index + 1}"
            try:
                decoded.append(await pool.run(decode_image, data, name, config.max_image_pixels))
            except InvalidImage as exc:
                error = BadRequest if exc.code == "empty_file" else Unprocessable
                raise error(exc.message, code=exc.code) from exc
        vectors = await pool.run(model.embed_images, decoded)
        return _response(model, vectors)

    @app.post("/v1/embed/text", response_model=EmbedResponse, responses=ERRORS, tags=["embed"])
    async def embed_text(body: TextEmbedRequest, model: ModelDep, pool: PoolDep) -> EmbedResponse:
        """One L2-normalised vector per text, through the model's text tower."""
        texts = [text.strip() for text in body.texts]
        if not all(texts):
            raise BadRequest("texts must not be empty or blank", code="empty_text")
        return _response(model, await pool.run(model.embed_texts, texts))

    @app.get("/v1/model", response_model=ModelInfo, tags=["model"])
    async def model_info(model: ModelDep) -> ModelInfo:
        """Which model is loaded and how images are prepared for it."""
        return ModelInfo(
            model=model.name,
            architecture=model.architecture,
            checkpoint=str(model.checkpoint) if model.checkpoint else None,
            pretrained=model.pretrained,
            dim=model.dim,
            image_size=model.image_size,
            preprocessing=model.preprocessing,  # type: ignore[arg-type]
            preprocessing_steps=describe_transform(model),
            mean=model.mean,
            std=model.std,
            device=str(model.device),
            precision=model.precision,
            parameters=model.parameters,
        )

    return app
