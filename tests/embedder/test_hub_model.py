"""The embedder loads `hf-hub:imageomics/bioclip-2` through open_clip's own hub code, from the local hub;
pybioclip, the reference implementation, loads the same model and label files from the same hub and
must predict what /v1/classify predicts.

Adaptations, all on the serving side, none in either program: the hub serves the tiny test model
(random weights, 224 px input, the OpenAI mean and std that pybioclip hard-codes for BioCLIP models)
under BioCLIP-2's repo name, because pybioclip only runs its TreeOfLife classifier for the model names
it knows, and the TreeOfLife label files embedded by that model's text tower under the dataset repo it
reads. pybioclip wraps the model in `torch.compile`; TORCH_COMPILE_DISABLE=1 keeps that a plain call
(compiling takes minutes on two cores and changes no arithmetic that matters at 1e-4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stack.processes import ROOT, service
from tests.hub import LocalHub, Release

pytestmark = pytest.mark.e2e


def hub_env(hub: LocalHub, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDER_", "HF_"))}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture
def embedder(hub: LocalHub, release: Release, tmp_path: Path, free_port: Callable[[], int]) -> Iterator[str]:
    labels = tmp_path / "labels"
    labels.mkdir()
    for path, content in release.labels.items():
        (labels / Path(path).name).write_bytes(content)
    process = service("embedder", port=free_port(), log_dir=tmp_path)
    process.env = {
        **hub_env(hub, tmp_path / "hf-home"),
        "EMBEDDER_MODEL": "hf-hub:imageomics/bioclip-2",
        "EMBEDDER_TREE_OF_LIFE_DIR": str(labels),
        "EMBEDDER_PRECISION": "fp32",
        "EMBEDDER_TORCH_THREADS": "1",
    }
    try:
        process.start()
        process.wait_ready(180)
        yield process.url
    finally:
        process.stop()


def test_embedder_loads_the_model_from_the_hub_through_open_clip(embedder: str, hub: LocalHub, tmp_path: Path) -> None:
    model = httpx.get(embedder + "/v1/model", timeout=30).json()
    assert model["model"] == "hf-hub:imageomics/bioclip-2" and model["dim"] == 32
    assert len(hub.gets("open_clip_config.json")) == 1
    (weights,) = hub.gets("open_clip_model.safetensors")
    assert weights.path.startswith("/cdn/models/imageomics/bioclip-2/")  # where the hub's 302 sent open_clip
    cached = tmp_path / "hf-home" / "hub" / "models--imageomics--bioclip-2" / "snapshots"
    assert list(cached.rglob("open_clip_model.safetensors"))


def test_classify_matches_pybioclip_at_species_and_at_family(
    embedder: str, hub: LocalHub, tmp_path: Path, make_image: Callable[..., bytes]
) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"photo{i}.png"
        path.write_bytes(make_image(300, 200, seed=i, fmt="PNG"))
        paths.append(path)
    oracle = subprocess.run(
        [sys.executable, "-m", "tests.embedder.pybioclip_oracle", "species,family", *map(str, paths)],
        cwd=ROOT, env={**hub_env(hub, tmp_path / "pybioclip-home"), "TORCH_COMPILE_DISABLE": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert oracle.returncode == 0, oracle.stderr[-3000:]
    expected = json.loads(oracle.stdout.strip().splitlines()[-1])
    for rank, key in (("species", "species"), ("family", "family")):
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]
        answer = httpx.post(embedder + "/v1/classify", files=files, data={"rank": rank, "k": "5"}, timeout=60)
        assert answer.status_code == 200, answer.text
        for ours, theirs in zip(answer.json()["results"], expected[rank], strict=True):
            assert [p["name"] for p in ours["predictions"]] == [t[key] for t in theirs]
            for p, t in zip(ours["predictions"], theirs, strict=True):
                assert p["probability"] == pytest.approx(t["score"], abs=1e-4)
