"""`make check-precision`: reduced precision against fp32 on an operator's photos and collection (tiny model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import faiss
import numpy as np
import pytest

from bench import precision_check
from stack.demo_collection import SPECIES, draw_specimen
from stack.tiny_model import TinyModel


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    rng = random.Random(5)
    for i in range(count):
        draw_specimen(SPECIES[i % len(SPECIES)], rng).save(folder / f"{i:02d}.jpg", quality=90)
    (folder / "notes.txt").write_text("not a photo")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_top_k_overlap_counts_the_shared_ids_of_both_searches() -> None:
    rng = np.random.default_rng(0)
    collection = rng.standard_normal((50, 8)).astype(np.float32)
    collection /= np.linalg.norm(collection, axis=1, keepdims=True)
    index = precision_check.exact_index(collection)
    queries = collection[:5]
    assert precision_check.top_k_overlap(index, queries, queries).tolist() == [1.0] * 5
    # A query pointing the opposite way finds the opposite end of the collection: nothing shared.
    assert precision_check.top_k_overlap(index, queries, -queries).max() == 0.0


def test_check_precision_reports_int8_close_to_fp32_on_the_photos_own_index(
    tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", 30)
    out = tmp_path / "quality.json"
    argv = ["--model", tiny_model.name, "--architecture-config", str(tiny_model.config)]
    argv += ["--checkpoint", str(tiny_model.checkpoint), "--photos", str(photos), "--json", str(out)]
    status = precision_check.main([*argv, "--precisions", "int8", "--min-cosine", "0.99", "--min-overlap", "0.5"])
    printed = capsys.readouterr().out
    assert "30 photos" in printed and "| int8 |" in printed
    (found,) = json.loads(out.read_text())
    assert found["photos"] == 30 and found["k"] == 10
    assert 0.99 <= found["cosine_min"] <= 1.0
    assert 0.5 <= found["overlap_mean"] <= 1.0
    assert status == 0
    # The same photos against a collection given as a FAISS file; an impossible bar fails the check.
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    faiss.write_index(precision_check.exact_index(vectors / np.linalg.norm(vectors, axis=1, keepdims=True)),
                      str(tmp_path / "collection.index"))  # fmt: skip
    argv += ["--index", str(tmp_path / "collection.index"), "--precisions", "int8", "--min-cosine", "1.000001"]
    assert precision_check.main(argv) == 1
    assert "collection.index (nprobe 16)" in capsys.readouterr().out


def _argv(tiny_model: TinyModel, photos: Path) -> list[str]:
    return [
        "--model", tiny_model.name, "--architecture-config", str(tiny_model.config),
        "--checkpoint", str(tiny_model.checkpoint), "--photos", str(photos),
    ]  # fmt: skip


def test_too_few_photos_to_be_their_own_collection_are_refused_not_passed(
    tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ten photos searched among themselves: every top-10 is the whole collection, so any precision would "pass".
    photos = _photos(tmp_path / "photos", 10)
    assert precision_check.main(_argv(tiny_model, photos)) == 2
    assert "at least 30 are needed without --index" in capsys.readouterr().err


def test_an_index_of_another_width_is_refused_before_any_photo_is_embedded(
    tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    photos = _photos(tmp_path / "photos", 3)
    vectors = np.random.default_rng(2).standard_normal((50, 64)).astype(np.float32)
    faiss.write_index(precision_check.exact_index(vectors), str(tmp_path / "wide.index"))
    status = precision_check.main([*_argv(tiny_model, photos), "--index", str(tmp_path / "wide.index")])
    captured = capsys.readouterr()
    assert status == 2
    assert "holds 64-d vectors; tiny-test-clip makes 32-d ones" in captured.err
    assert "photos in" not in caplog.text  # nothing was embedded


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--precisions", "int9"], "int9 unknown"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--photos", "/nonexistent/photos"], "no such folder"),
    ],
)
def test_arguments_that_cannot_work_are_usage_errors(
    tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        precision_check.main([*_argv(tiny_model, tmp_path), *extra])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_a_precision_this_device_cannot_run_is_one_line_naming_the_setting(
    tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    photos = _photos(tmp_path / "photos", 30)
    assert precision_check.main([*_argv(tiny_model, photos), "--precisions", "fp16"]) == 2
    captured = capsys.readouterr()
    assert "fp16: EMBEDDER_PRECISION=fp16 is for GPUs" in captured.err
    assert "photos in" not in caplog.text  # refused before fp32 embedded anything
