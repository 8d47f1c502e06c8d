"""Requests and responses of the embedder service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Preprocessing = Literal["pybioclip", "open_clip"]


class EmbedResponse(BaseModel):
    model: str = Field(description="The model that made the vectors.")
    dim: int = Field(description="Length of each vector.")
    count: int
    vectors: list[list[float]] = Field(description="L2-normalised float32 vectors, in input order.")


class TextEmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=256, description="Texts to embed, 1 to 256.")


class ModelInfo(BaseModel):
    model: str = Field(description="Hub name or architecture name the model was loaded as.")
    architecture: str
    checkpoint: str | None = Field(description="Local checkpoint file, when loaded from one.")
    pretrained: bool = Field(description="False when running with random weights (benchmarks, demo).")
    dim: int
    image_size: int
    preprocessing: Preprocessing
    preprocessing_steps: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str
    precision: str
    parameters: int
