"""Start-up: /readyz false until the model is loaded, one clear line when it cannot be, and how it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from services.embedder.app import create_app
from services.embedder.engine import load_resources
from services.embedder.model import ModelLoadError, load_model
from services.embedder.settings import EmbedderSettings
from stack.processes import ROOT
from tests.conftest import ImageFactory
from tests.embedder.conftest import running, wait_ready, write_labels


def test_health_answers_and_readiness_waits_while_the_model_loads(
    embedder_settings: EmbedderSettings, make_image: ImageFactory
) -> None:
    gate = threading.Event()

    def gated_loader(settings: EmbedderSettings):  # type: ignore[no-untyped-def]
        gate.wait(30)  # the real loader, held back until the test has looked
        return load_resources(settings)

    with TestClient(create_app(embedder_settings, loader=gated_loader)) as client:
        assert client.get("/healthz").status_code == 200
        readiness = client.get("/readyz")
        assert readiness.status_code == 503
        assert readiness.json() == {"ready": False, "service": "embedder", "reason": "loading the model"}
        early = client.post("/v1/embed/image", files=[("images", ("a.jpg", make_image(), "image/jpeg"))])
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        assert early.headers["retry-after"] == "2"  # a client is told when to ask again
        assert client.get("/v1/model").status_code == 503
        gate.set()
        wait_ready(client)
        later = client.post("/v1/embed/image", files=[("images", ("a.jpg", make_image(), "image/jpeg"))])
        assert later.status_code == 200


def test_a_failed_load_keeps_the_service_unready_and_says_which_setting(
    embedder_settings: EmbedderSettings, tmp_path: Path
) -> None:
    calls: list[str] = []
    settings = embedder_settings.model_copy(update={"checkpoint": tmp_path / "missing.pt"})
    with TestClient(create_app(settings, on_load_failure=lambda: calls.append("stop"))) as client:
        for _ in range(500):
            if calls:
                break
            threading.Event().wait(0.01)
        readiness = client.get("/readyz").json()
        embed = client.post("/v1/embed/text", json={"texts": ["x"]})
    assert calls == ["stop"]
    assert readiness["ready"] is False and "EMBEDDER_CHECKPOINT" in readiness["reason"]
    assert embed.status_code == 503 and "EMBEDDER_CHECKPOINT" in embed.json()["error"]["message"]


def _run_embedder(
    env: dict[str, str], free_port: Callable[[], int], timeout: float = 120
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    full = {**os.environ, "EMBEDDER_HOST": "127.0.0.1", "EMBEDDER_PORT": str(free_port()), **env}
    return subprocess.run(
        [sys.executable, "-m", "services.embedder"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout
    )


def test_the_server_starts_before_torch_and_open_clip_are_imported() -> None:
    # What `python -m services.embedder` runs before uvicorn answers /healthz: the app, its routes and the
    # server. torch, torchvision (whose ops import torch._dynamo), timm and open_clip are most of a restart,
    # and load in the loading thread after the server answers (docs/benchmarks/reliability.md).
    script = (
        "import sys; from services.common.serve import serve; from services.embedder.app import create_app; "
        "from services.embedder.settings import EmbedderSettings; create_app(EmbedderSettings()); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'timm', 'open_clip'}))"
    )
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[]"


def test_offline_hub_model_ends_the_process_with_one_line_naming_the_setting(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    finished = _run_embedder(
        {
            "EMBEDDER_MODEL": "hf-hub:imageomics/bioclip-2",
            "EMBEDDER_CACHE_DIR": str(tmp_path / "empty-cache"),
            "HF_HOME": str(tmp_path / "hf"),
            # No network: the hub client must not even try (and would find nothing listening if it did).
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9",
        },
        free_port,
    )
    output = finished.stdout + finished.stderr
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert finished.returncode == 1, output
    assert "Traceback" not in output
    assert len(errors) == 1, output
    assert "EMBEDDER_CACHE_DIR" in errors[0] and "EMBEDDER_CHECKPOINT" in errors[0]
    assert "hf-hub:imageomics/bioclip-2" in errors[0]


def test_a_bad_label_file_ends_start_up_naming_its_setting(embedder_settings: EmbedderSettings, tmp_path: Path) -> None:
    folder = write_labels(tmp_path / "tol", np.eye(32, dtype=np.float32)[:3], [[["A"] * 7, ""]] * 2)
    with pytest.raises(ModelLoadError, match=r"tree_of_life_dir.*3 columns but .* 2 entries"):
        load_resources(embedder_settings.model_copy(update={"tree_of_life_dir": folder}))
    wrong_dim = write_labels(tmp_path / "other", np.eye(16, dtype=np.float32)[:2], [[["A"] * 7, ""]] * 2)
    with pytest.raises(ModelLoadError, match=r"16-d text vectors but .* 32-d"):
        load_resources(embedder_settings.model_copy(update={"tree_of_life_dir": wrong_dim}))
    with pytest.raises(ModelLoadError, match=r"tree_of_life_dir.*holds no txt_emb_species\.npy"):
        load_resources(embedder_settings.model_copy(update={"tree_of_life_dir": tmp_path / "nowhere"}))


def test_bf16_runs_and_stays_close_to_fp32(embedder_settings: EmbedderSettings, make_image: ImageFactory) -> None:
    files = [("images", (f"{i}.jpg", make_image(seed=i), "image/jpeg")) for i in range(3)]
    with running(embedder_settings) as client:
        fp32 = np.asarray(client.post("/v1/embed/image", files=files).json()["vectors"])
    with running(embedder_settings.model_copy(update={"precision": "bf16"})) as client:
        response = client.post("/v1/embed/image", files=files)
        assert client.get("/v1/model").json()["precision"] == "bf16"
    bf16 = np.asarray(response.json()["vectors"])
    cosines = (fp32 * bf16).sum(axis=1)
    assert np.all(cosines > 0.99) and not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)


def test_fp16_on_the_cpu_is_refused_naming_the_setting(embedder_settings: EmbedderSettings) -> None:
    with pytest.raises(ModelLoadError, match="precision=fp16 is for GPUs"):
        load_model(embedder_settings.model_copy(update={"precision": "fp16"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_device_without_a_gpu_is_refused_naming_the_setting(embedder_settings: EmbedderSettings) -> None:
    with pytest.raises(ModelLoadError, match="device=cuda but torch sees no CUDA GPU"):
        load_model(embedder_settings.model_copy(update={"device": "cuda"}))


def test_an_unknown_device_is_refused_naming_the_setting(embedder_settings: EmbedderSettings) -> None:
    with pytest.raises(ModelLoadError, match="device=tpu"):
        load_model(embedder_settings.model_copy(update={"device": "tpu"}))


def test_model_info_reports_threads_batching_and_scale(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["torch_threads"] == 1  # embedder_settings sets EMBEDDER_TORCH_THREADS=1
    assert info["max_batch_size"] == 8 and info["max_batch_wait_ms"] == 50.0
    assert info["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-3)  # open_clip's initial temperature
    assert info["tree_of_life_labels"] is None
