"""The similarity scale: stored vectors sampled by (list, offset) or position, searched, judged by their rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.search.app import create_app
from services.search.index import VectorIndex
from services.search.scale import ScaleUnavailable, measure_scale, sample_stored
from services.search.settings import INDEX_FILE
from tests.search.conftest import Collection, MilvusLite, rows_for, unit_vectors, write_collection

SPECIES, PER_SPECIES, DIM = 60, 8, 32


def clustered(seed: int = 3, spread: float = 0.15) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """SPECIES species of PER_SPECIES records each, every record near its species' centre; two species a genus.
    Records are interleaved (species i % SPECIES) so that ids do not follow species."""
    rng = np.random.default_rng(seed)
    centres = unit_vectors(SPECIES, DIM, seed=seed)
    vectors, rows = [], []
    for i in range(SPECIES * PER_SPECIES):
        kind = i % SPECIES
        vector = centres[kind] + rng.normal(scale=spread / np.sqrt(DIM), size=DIM)
        vectors.append(vector / np.linalg.norm(vector))
        row = rows_for(1)[0] | {"genus": f"Genus{kind // 2}", "species": f"epithet{kind}", "common_name": None}
        rows.append(row)
    return np.asarray(vectors, dtype=np.float32), rows


def scale_of(client: TestClient, seconds: float = 20) -> dict[str, Any] | None:
    """/v1/stats' similarity_scale once measured (it is measured in the background after start-up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        scale = client.get("/v1/stats").json()["similarity_scale"]
        if scale is not None:
            return scale
        time.sleep(0.05)
    return None


@pytest.fixture(scope="module")
def clustered_rows() -> tuple[np.ndarray, list[dict[str, Any]]]:
    return clustered()


@pytest.mark.parametrize(
    ("factory", "mmap"), [("Flat", False), ("IVF8,Flat", True), ("IVF8,PQ16x4", True), ("HNSW16", False)]
)
def test_scale_reports_same_species_close_and_other_genera_far(
    tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict[str, Any]]], factory: str, mmap: bool
) -> None:
    vectors, rows = clustered_rows
    collection = write_collection(tmp_path, vectors, rows, factory=factory)
    with TestClient(create_app(collection.settings(mmap=mmap, similarity_scale_samples=200))) as client:
        scale = scale_of(client)
    assert scale is not None
    assert scale["samples"] == 200 and scale["neighbours"] == 50
    same, unrelated = scale["same_species"], scale["other_genera"]
    # Same-species records are built at cosine ~0.99 of each other; records of other genera ~0 (32-d, random).
    assert same["count"] >= 190 and same["p25"] > 0.9
    assert abs(unrelated["median"]) < 0.15 and unrelated["p90"] < 0.5
    assert unrelated["count"] > 15_000  # pairs of 200 records, less those of one genus
    assert scale["nearest_other_genus"]["median"] < same["p10"]
    assert scale["encoding"] == VectorIndex.open(tmp_path / INDEX_FILE, mmap=False).kind


def test_milvus_backend_serves_without_a_scale_and_says_why(
    tmp_path: Path,
    clustered_rows: tuple[np.ndarray, list[dict[str, Any]]],
    milvus: MilvusLite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stored vectors are sampled from FAISS files only: on Milvus the scale stays null, logged as a reason."""
    vectors, rows = clustered_rows
    collection = write_collection(tmp_path, vectors, rows)
    settings = collection.settings(**milvus.settings(collection), similarity_scale_samples=200)
    with caplog.at_level("INFO", logger="services.search.app"), TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while "similarity scale" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = client.get("/v1/stats").json()
        assert client.post("/v1/search", json={"vectors": [vectors[0].tolist()], "top_n": 3}).status_code == 200
    assert stats["backend"] == "milvus" and stats["similarity_scale"] is None
    assert "sampled from a FAISS index only" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("services.")]


def test_no_scale_with_duckdb_row_lookups_and_the_log_says_why(
    tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    """Without the sidecar every neighbour's row would be a DuckDB lookup by id, pinning index memory at full size."""
    vectors, rows = clustered_rows
    collection = write_collection(tmp_path, vectors, rows)
    settings = collection.settings(use_sidecar=False, similarity_scale_samples=200)
    with caplog.at_level("INFO", logger="services.search.app"), TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while "similarity scale" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v1/stats").json()["similarity_scale"] is None
    assert "with the lookup sidecar only" in caplog.text


def test_scale_follows_the_vectors_not_the_names(
    tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict[str, Any]]]
) -> None:
    """The same rows over vectors that ignore species: same-species neighbours score like unrelated ones."""
    _, rows = clustered_rows
    collection = write_collection(tmp_path, unit_vectors(len(rows), DIM, seed=9), rows)
    with TestClient(create_app(collection.settings(similarity_scale_samples=200))) as client:
        scale = scale_of(client)
    assert scale is not None
    # The nearest of 7 random same-species records among 479 is no longer close.
    assert scale["same_species"]["median"] < 0.6
    assert scale["same_species"]["count"] < 200  # some have none within 50 neighbours


def test_ivf_sample_gives_stored_vectors_with_their_ids(tmp_path: Path) -> None:
    vectors = unit_vectors(3000, 16, seed=4)
    collection = write_collection(tmp_path, vectors, rows_for(3000), factory="IVF32,Flat")
    index = VectorIndex.open(collection.folder / INDEX_FILE, mmap=True)
    sample = sample_stored(index, 100)
    assert len(sample.ids) == 100 and len(set(sample.ids.tolist())) == 100
    assert np.allclose(sample.vectors, vectors[sample.ids], atol=1e-6)
    # Uniform over entries, not over lists: about as many from each half of the ids.
    assert 30 < int((sample.ids < 1500).sum()) < 70


def test_pre_transformed_ivf_sample_maps_back_to_the_input_space(tmp_path: Path) -> None:
    vectors = unit_vectors(3000, 16, seed=4)
    collection = write_collection(tmp_path, vectors, rows_for(3000), factory="PCA16,IVF8,Flat")
    sample = sample_stored(VectorIndex.open(collection.folder / INDEX_FILE, mmap=False), 50)
    assert np.allclose(sample.vectors, vectors[sample.ids], atol=1e-4)


def test_an_id_mapped_flat_index_is_sampled_by_position_with_its_ids(tmp_path: Path) -> None:
    vectors = unit_vectors(300, 8, seed=2)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(8))
    index.add_with_ids(vectors, np.arange(300, dtype=np.int64) * 3 + 1)
    path = tmp_path / "ids.index"
    faiss.write_index(index, str(path))
    sample = sample_stored(VectorIndex.open(path, mmap=False), 40)
    assert np.all(sample.ids % 3 == 1)
    assert np.allclose(sample.vectors, vectors[(sample.ids - 1) // 3], atol=1e-6)


def test_no_scale_without_species_names(tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict]]) -> None:
    vectors, rows = clustered_rows
    nameless = [row | {"genus": None, "species": None} for row in rows]
    collection = write_collection(tmp_path, vectors, nameless)
    with TestClient(create_app(collection.settings(similarity_scale_samples=200))) as client:
        assert scale_of(client, seconds=2) is None
        assert client.get("/readyz").status_code == 200  # still up: the scale is informational
        engine = client.app.state.engine  # type: ignore[attr-defined]
        with pytest.raises(ScaleUnavailable, match="0 of 200 sampled records name their species"):
            measure_scale(engine.index, engine.lookup, samples=200, nprobe=8, ef_search=16)


def test_no_scale_from_too_few_records(tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict]]) -> None:
    vectors, rows = clustered_rows
    collection = write_collection(tmp_path, vectors[:12], rows[:12])
    with TestClient(create_app(collection.settings())) as client:
        assert scale_of(client, seconds=2) is None
        engine = client.app.state.engine  # type: ignore[attr-defined]
        with pytest.raises(ScaleUnavailable, match="12 of 12 sampled records"):
            measure_scale(engine.index, engine.lookup, samples=256, nprobe=8, ef_search=16)


def test_no_scale_when_turned_off(tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict]]) -> None:
    vectors, rows = clustered_rows
    collection = write_collection(tmp_path, vectors, rows)
    with TestClient(create_app(collection.settings(similarity_scale_samples=0))) as client:
        assert scale_of(client, seconds=1) is None


def test_scale_is_the_same_at_every_start(tmp_path: Path, clustered_rows: tuple[np.ndarray, list[dict]]) -> None:
    vectors, rows = clustered_rows
    collection: Collection = write_collection(tmp_path, vectors, rows, factory="IVF8,Flat")
    answers = []
    for _ in range(2):
        with TestClient(create_app(collection.settings(similarity_scale_samples=64))) as client:
            answers.append(scale_of(client))
    assert answers[0] is not None and answers[0] == answers[1]
