"""Shared fixtures: the tiny open_clip checkpoint, image factories, local image sources, free ports."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.embedder.settings import EmbedderSettings
from stack.tiny_model import TinyModel, write_tiny_model
from tests.hub import LocalHub, Release, make_release, serve_hub
from tests.sources import Source, start_source


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A tiny open_clip architecture with random weights, saved as config + checkpoint."""
    return write_tiny_model(tmp_path_factory.mktemp("model"), name="tiny-test-clip", embed_dim=32, width=32)


def tiny_embedder_settings(model: TinyModel) -> EmbedderSettings:
    """The tiny model loaded the production way, with fp32 pinned so exact comparisons hold on any
    CPU (the default, `auto`, picks bf16 where the CPU has AVX512-BF16 or AMX)."""
    return EmbedderSettings(
        model=model.name,
        architecture_config=model.config,
        checkpoint=model.checkpoint,
        blocking_threads=2,
        torch_threads=1,
        precision="fp32",
    )


@pytest.fixture
def embedder_settings(tiny_model: TinyModel) -> EmbedderSettings:
    return tiny_embedder_settings(tiny_model)


ImageFactory = Callable[..., bytes]


@pytest.fixture
def make_image() -> ImageFactory:
    """Encoded image bytes: random pixels (seeded) of a given size, mode and format."""

    def make(
        width: int = 96, height: int = 64, *, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB", **save: object
    ) -> bytes:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        # Smooth blobs rather than noise, so JPEG keeps most of the picture.
        image = Image.fromarray(pixels).resize((max(2, width // 8), max(2, height // 8))).resize((width, height))
        if mode != "RGB":
            image = image.convert(mode)
        out = io.BytesIO()
        image.save(out, format=fmt, **save)
        return out.getvalue()

    return make


@pytest.fixture
def free_port() -> Callable[[], int]:
    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return pick


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    """A local HTTP image source whose routes each test programs."""
    with start_source(tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Release:
    """A tiny release in the published repos' layouts: collection, TreeOfLife label files, the model."""
    return make_release(tmp_path_factory.mktemp("release"), tiny_model)


@pytest.fixture
def hub(release: Release) -> Iterator[LocalHub]:
    """The local Hugging Face hub on 127.0.0.1, publishing `release`."""
    with serve_hub(release.publish(LocalHub())) as running:
        yield running
