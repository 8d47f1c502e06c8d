"""POST /v1/embed/image and /v1/embed/text: one unit vector per input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, File, UploadFile
from starlette.datastructures import UploadFile as StarletteUpload

from services.common.schemas.embedder import EmbedResponse, TextEmbedRequest
from services.embedder.dependencies import EmbedderDep
from services.embedder.routes import ERRORS

if TYPE_CHECKING:
    import numpy as np

    from services.embedder.engine import Embedder

router = APIRouter(tags=["embed"])


async def read_uploads(uploads: list[Any]) -> list[tuple[str, bytes]]:
    """(name, bytes) of the uploaded files among `uploads`, in order; plain form values are skipped."""
    files = [upload for upload in uploads if isinstance(upload, StarletteUpload)]
    return [(upload.filename or f"image {i + 1}", await upload.read()) for i, upload in enumerate(files)]


def _response(embedder: Embedder, vectors: np.ndarray) -> EmbedResponse:
    return EmbedResponse(
        model=embedder.model.name, dim=embedder.model.dim, count=len(vectors), vectors=vectors.tolist()
    )


@router.post("/v1/embed/image", response_model=EmbedResponse, responses=ERRORS)
async def embed_image(
    images: Annotated[list[UploadFile], File(description="One or more image files.")], embedder: EmbedderDep
) -> EmbedResponse:
    """One L2-normalised vector per uploaded image, in upload order."""
    return _response(embedder, await embedder.embed_images(await read_uploads(images)))


@router.post("/v1/embed/text", response_model=EmbedResponse, responses=ERRORS)
async def embed_text(body: TextEmbedRequest, embedder: EmbedderDep) -> EmbedResponse:
    """One L2-normalised vector per text, through the model's text tower."""
    return _response(embedder, await embedder.embed_texts(body.texts))
