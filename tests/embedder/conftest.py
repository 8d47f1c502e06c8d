"""The embedder app, started for real (the tiny checkpoint through the production path) and waited on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.embedder.app import create_app
from services.embedder.settings import EmbedderSettings
from stack.tiny_model import TinyModel
from tests.conftest import tiny_embedder_settings


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Poll /readyz as the local runner does: the model loads in the background after start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        if client.app.state.fatal_error:  # type: ignore[attr-defined]
            raise AssertionError(f"the model failed to load: {client.app.state.fatal_error}")  # type: ignore[attr-defined]
        time.sleep(0.02)
    raise AssertionError(f"the embedder was not ready after {timeout} s")


@pytest.fixture(scope="module")
def module_settings(tiny_model: TinyModel) -> EmbedderSettings:
    return tiny_embedder_settings(tiny_model)


@contextmanager
def running(settings: EmbedderSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(module_settings: EmbedderSettings) -> Iterator[TestClient]:
    """One running app per test module: tests that need other settings start their own."""
    with running(module_settings) as test_client:
        yield test_client


def write_labels(folder: Path, vectors: np.ndarray, entries: list[list[object]], *, nested: bool = False) -> Path:
    """The TreeOfLife pair in the DESIGN layout: `txt_emb_species.npy` (dim x N) and `.json`."""
    target = folder / "embeddings" if nested else folder
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / "txt_emb_species.npy", np.ascontiguousarray(vectors.T.astype(np.float32)))
    (target / "txt_emb_species.json").write_text(json.dumps(entries))
    return folder
