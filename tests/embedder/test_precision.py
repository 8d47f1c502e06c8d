"""Precision: int8 through ONNX Runtime, `auto`'s probe-based choice, and what /v1/model says about it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from services.embedder.model import ModelLoadError, load_model
from services.embedder.precision import PROBE_MARGIN, PrecisionChoice, PrecisionError, check, choose, native_bf16
from services.embedder.settings import EmbedderSettings
from stack.processes import ROOT
from tests.embedder.conftest import running


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 224, dtype=np.uint8)
    across, down = np.tile(ramp, (224, 1)), np.tile(ramp[:, None], (1, 224))
    gradient = Image.fromarray(np.stack([across, down, 255 - across], axis=-1))
    blobs = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((320, 240))
    return [noise, gradient, blobs, Image.new("RGB", (100, 100), (30, 140, 40))]


def _consistent(choice: PrecisionChoice) -> None:
    """The choice follows from the probe's own timings: the fastest candidate, and fp32 unless another one beat
    fp32 by the margin."""
    timings = choice.probe_ms
    assert choice.precision in timings
    fastest = min(timings, key=lambda name: timings[name])
    if choice.precision == "fp32":
        assert fastest == "fp32" or timings[fastest] > PROBE_MARGIN * timings["fp32"]
    else:
        assert choice.precision == fastest
        assert timings[fastest] <= PROBE_MARGIN * timings["fp32"]


def test_an_int8_vector_does_not_depend_on_the_other_inputs_of_its_pass(
    embedder_settings: EmbedderSettings, tmp_path: Path
) -> None:
    # ONNX Runtime's dynamic quantization takes one activation scale per tensor: run as one batch, a photo's
    # vector would change with the other callers' photos the batcher put beside it (a flat colour beside noise).
    int8 = load_model(embedder_settings.model_copy(update={"precision": "int8", "cache_dir": tmp_path}))
    images = _images()
    together = int8.embed_images(images)
    alone = np.stack([int8.embed_images([image])[0] for image in images])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    texts = ["a photo of a beetle", "Danaus plexippus", "x" * 300, "a moth at night, photographed from below"]
    np.testing.assert_allclose(
        int8.embed_texts(texts), np.stack([int8.embed_texts([text])[0] for text in texts]), rtol=0, atol=1e-6
    )


def test_int8_embeds_images_and_texts_close_to_fp32(embedder_settings: EmbedderSettings) -> None:
    fp32 = load_model(embedder_settings)
    int8 = load_model(embedder_settings.model_copy(update={"precision": "int8"}))
    assert int8.precision == "int8"
    assert int8.choice is not None and int8.choice.reason == "set by the precision setting"
    images = _images()
    reference, quantized = fp32.embed_images(images), int8.embed_images(images)
    assert quantized.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    cosines = (reference * quantized).sum(axis=1)
    assert cosines.min() > 0.99, cosines
    # Quantized, not just relabelled: the vectors differ from fp32's.
    assert not np.allclose(reference, quantized, atol=1e-6)
    texts = ["a photo of a beetle", "Danaus plexippus"]
    text_cosines = (fp32.embed_texts(texts) * int8.embed_texts(texts)).sum(axis=1)
    assert text_cosines.min() > 0.99, text_cosines


def test_auto_chooses_by_the_probe_it_ran_on_this_cpu(embedder_settings: EmbedderSettings) -> None:
    model = load_model(embedder_settings)  # fp32, as auto builds it
    choice = choose("auto", torch.device("cpu"), model.model, auto_int8=True)
    capability = torch.backends.cpu.get_cpu_capability()
    assert choice.cpu_capability == capability
    expected = {"fp32", "int8"} | ({"bf16"} if native_bf16(capability) else set())
    assert set(choice.probe_ms) == expected
    assert all(ms > 0 for ms in choice.probe_ms.values())
    _consistent(choice)
    assert choice.precision in choice.reason and "probe" in choice.reason


def test_auto_without_int8_enabled_never_probes_or_chooses_int8(embedder_settings: EmbedderSettings) -> None:
    loaded = load_model(embedder_settings.model_copy(update={"precision": "auto"}))
    assert loaded.choice is not None
    assert loaded.precision != "int8" and "int8" not in loaded.choice.probe_ms
    assert "int8 not enabled" in loaded.choice.reason


def test_auto_limited_to_avx2_never_chooses_bf16(embedder_settings: EmbedderSettings) -> None:
    """What a lab workstation without AVX-512 runs: PyTorch limited to AVX2 kernels emulates bf16, so auto must not
    pick it whatever the CPU's flags say; int8 may win the probe (it is enabled here), fp32 otherwise."""
    settings = embedder_settings.model_copy(update={"precision": "auto", "auto_int8": True})
    script = (
        "import json, sys; from services.embedder.model import load_model; "
        "from services.embedder.settings import EmbedderSettings; "
        "m = load_model(EmbedderSettings.model_validate_json(sys.argv[1])); c = m.choice; "
        "print(json.dumps({'precision': c.precision, 'capability': c.cpu_capability, 'probe_ms': c.probe_ms, "
        "'reason': c.reason}))"
    )
    env = os.environ | {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", script, settings.model_dump_json()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["capability"] == "AVX2"
    assert found["precision"] in ("fp32", "int8")
    assert set(found["probe_ms"]) == {"fp32", "int8"}
    assert "bf16 not native (AVX2 kernels)" in found["reason"]
    _consistent(PrecisionChoice("auto", found["precision"], found["reason"], found["capability"], found["probe_ms"]))


def test_auto_is_fp16_on_cuda_and_fp32_on_other_gpus_without_a_probe() -> None:
    module = torch.nn.Linear(4, 4)  # never probed off the CPU
    assert choose("auto", torch.device("cuda"), module, auto_int8=True).precision == "fp16"
    mps = choose("auto", torch.device("mps"), module, auto_int8=True)
    assert mps.precision == "fp32" and mps.probe_ms == {}


def test_precisions_a_device_cannot_run_are_refused_naming_the_setting(embedder_settings: EmbedderSettings) -> None:
    with pytest.raises(PrecisionError, match="precision=int8 runs on the CPU"):
        check("int8", torch.device("cuda"))
    with pytest.raises(ModelLoadError, match="precision=fp16 is for GPUs"):
        load_model(embedder_settings.model_copy(update={"precision": "fp16"}))


def test_precision_settings_are_validated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_PRECISION", "int8")
    monkeypatch.setenv("EMBEDDER_AUTO_INT8", "true")
    settings = EmbedderSettings()
    assert settings.precision == "int8" and settings.auto_int8 is True
    for wrong in ("int4", "INT8 ", "fp64", ""):
        monkeypatch.setenv("EMBEDDER_PRECISION", wrong)
        with pytest.raises(ValidationError, match="precision"):
            EmbedderSettings()
    monkeypatch.setenv("EMBEDDER_PRECISION", "auto")
    monkeypatch.setenv("EMBEDDER_AUTO_INT8", "perhaps")
    with pytest.raises(ValidationError, match="auto_int8"):
        EmbedderSettings()


def test_model_info_reports_the_choice_its_reason_and_the_probe(embedder_settings: EmbedderSettings) -> None:
    with running(embedder_settings.model_copy(update={"precision": "auto", "auto_int8": True})) as client:
        info = client.get("/v1/model").json()
    assert info["precision_requested"] == "auto"
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    probe = info["precision_probe_ms"]
    assert {"fp32", "int8"} <= set(probe)
    assert info["precision_probe_seconds"] > 0
    _consistent(PrecisionChoice("auto", info["precision"], info["precision_reason"], info["cpu_capability"], probe))
    with running(embedder_settings.model_copy(update={"precision": "int8"})) as client:
        info = client.get("/v1/model").json()
    assert info["precision"] == "int8" and info["precision_requested"] == "int8"
    assert info["precision_reason"] == "set by the precision setting" and info["precision_probe_ms"] is None
    # Set, not chosen, and still the kernels PyTorch runs: what explains a slow precision.
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_bf16_set_where_it_is_emulated_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    module = torch.nn.Linear(4, 4)
    with caplog.at_level("WARNING", logger="services.embedder.precision"):
        choice = choose("bf16", torch.device("cpu"), module, auto_int8=False)
    assert choice.precision == "bf16" and choice.cpu_capability == torch.backends.cpu.get_cpu_capability()
    if native_bf16(choice.cpu_capability):
        assert choice.reason == "set by the precision setting" and not caplog.records
    else:
        assert "emulated" in choice.reason and choice.cpu_capability in choice.reason
        assert len([r for r in caplog.records if "emulated" in r.getMessage()]) == 1


def test_int8_towers_are_kept_under_the_cache_dir_and_reused(
    embedder_settings: EmbedderSettings, tmp_path: Path
) -> None:
    settings = embedder_settings.model_copy(update={"precision": "int8", "cache_dir": tmp_path})
    first = load_model(settings)
    assert first.int8 is not None and first.int8.folder is not None
    files = sorted(first.int8.folder.glob("*.onnx"))
    assert [f.name for f in files] == ["image.onnx", "text.onnx"]
    made = [f.stat().st_mtime_ns for f in files]
    second = load_model(settings)
    assert second.int8 is not None and second.int8.folder == first.int8.folder
    assert [f.stat().st_mtime_ns for f in files] == made  # read again, not remade
    image = [Image.new("RGB", (64, 64), (200, 30, 30))]
    np.testing.assert_allclose(first.embed_images(image), second.embed_images(image), atol=1e-6)


def test_a_damaged_cached_int8_tower_is_made_again_not_a_failed_start(
    embedder_settings: EmbedderSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = embedder_settings.model_copy(update={"precision": "int8", "cache_dir": tmp_path})
    first = load_model(settings)
    assert first.int8 is not None and first.int8.folder is not None
    cached = first.int8.folder / "image.onnx"
    whole = cached.stat().st_size
    cached.write_bytes(cached.read_bytes()[: whole // 3])  # what a full disk's copy leaves
    with caplog.at_level("WARNING", logger="services.embedder.precision"):
        second = load_model(settings)
    assert "could not be read" in caplog.text and "making it again" in caplog.text
    assert cached.stat().st_size == whole
    image = [Image.new("RGB", (64, 64), (30, 200, 30))]
    np.testing.assert_allclose(first.embed_images(image), second.embed_images(image), atol=1e-6)
