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
    photos = _photos(tmp_path / "photos", 14)
    out = tmp_path / "quality.json"
    argv = ["--model", tiny_model.name, "--architecture-config", str(tiny_model.config)]
    argv += ["--checkpoint", str(tiny_model.checkpoint), "--photos", str(photos), "--json", str(out)]
    status = precision_check.main([*argv, "--precisions", "int8", "--min-cosine", "0.99", "--min-overlap", "0.5"])
    printed = capsys.readouterr().out
    assert "14 photos" in printed and "| int8 |" in printed
    (found,) = json.loads(out.read_text())
    assert found["photos"] == 14 and found["k"] == 10
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
