"""Embedder settings, from EMBEDDER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", extra="ignore")

    port: int = Field(8001, ge=1, le=65535, description="TCP port to listen on.")
    model: str = Field(
        "hf-hub:imageomics/bioclip-2",
        description="open_clip model: an `hf-hub:` name, or an architecture name used with `checkpoint`.",
    )
    checkpoint: Path | None = Field(None, description="Local weights file for the `model` architecture.")
    architecture_config: Path | None = Field(
        None,
        description="An open_clip model config JSON to register before loading (for architectures "
        "open_clip does not ship; the file name without .json is the architecture name).",
    )
    random_weights: bool = Field(
        False, description="Allow an architecture with no checkpoint to run with random weights (benchmarks only)."
    )
    preprocessing: Literal["pybioclip", "open_clip"] = Field(
        "pybioclip",
        description="`pybioclip`: resize to exactly the model's size, no crop (matches the pre-built "
        "TreeOfLife index). `open_clip`: open_clip's own shortest-side resize and centre crop.",
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps.")
    cache_dir: Path | None = Field(None, description="Where hub downloads are cached.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; unset lets torch choose.")
    max_images_per_request: int = Field(32, ge=1, description="Most images one request may carry.")
    max_request_bytes: int = Field(50_000_000, ge=1, description="Largest request body, in bytes.")
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="Largest decoded image, in pixels (Pillow's decompression-bomb limit)."
    )
