"""Edges of real indexes: min_similarity on IVF lists that ran dry, ids held more than once, stored vectors
that are NaN or zero. Each case is a small FAISS index built for it, beside metadata written by the builder."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from collection.build import write_metadata
from services.search.app import create_app
from services.search.settings import INDEX_FILE, METADATA_FILE
from tests.search.conftest import Collection, rows_for, unit_vectors


def _collection(folder: Path, index: faiss.Index, vectors: np.ndarray, count: int) -> Collection:
    (folder / INDEX_FILE).parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    rows = rows_for(count)
    write_metadata(rows, folder / METADATA_FILE)
    return Collection(folder, vectors, rows)


def _search(client: TestClient, vector: np.ndarray, **body: object) -> dict:
    response = client.post("/v1/search", json={"vectors": [vector.tolist()], **body})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


# --- min_similarity on an IVF index ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ivf_spread(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """2,000 vectors in 32 lists; the query's near neighbours are spread over many lists."""
    vectors = unit_vectors(2000, 8, seed=11)
    quantizer = faiss.IndexFlatIP(8)
    index = faiss.IndexIVFFlat(quantizer, 8, 32, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    return _collection(tmp_path_factory.mktemp("ivf-spread"), index, vectors, 2000)


@pytest.mark.parametrize("lookup", ["sidecar", "duckdb"])
def test_min_similarity_on_ivf_widens_past_lists_that_ran_dry(ivf_spread: Collection, lookup: str) -> None:
    query = ivf_spread.vectors[42]
    sims = np.sort(ivf_spread.vectors @ query)[::-1]
    threshold = float(sims[79])  # eighty records qualify, more than one list holds
    index = faiss.read_index(str(ivf_spread.folder / INDEX_FILE))
    one_list, _ = index.search(query[None, :], 2000, params=faiss.SearchParametersIVF(nprobe=1))
    assert 0 < int((one_list >= threshold).sum()) < 50  # the case: the list visited first holds too few
    with TestClient(create_app(ivf_spread.settings(use_sidecar=lookup == "sidecar"))) as client:
        result = _search(client, query, top_n=50, nprobe=1, min_similarity=threshold)
        assert len(result["hits"]) == 50 and result["search"]["stopped"] == "filled"
        assert all(hit["similarity"] >= threshold for hit in result["hits"])
        # Asking for more than qualify: the threshold is really reached, every qualifying record is found.
        wide = _search(client, query, top_n=120, nprobe=1, min_similarity=threshold)
    assert wide["search"]["stopped"] == "min_similarity" and wide["search"]["nprobe"] > 1
    expected = set(np.flatnonzero(ivf_spread.vectors @ query >= threshold).tolist())
    assert {hit["record"]["id"] for hit in wide["hits"]} == expected


def test_min_similarity_on_a_flat_index_stops_at_the_threshold_at_once(tmp_path: Path) -> None:
    vectors = unit_vectors(300, 8, seed=5)
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    collection = _collection(tmp_path, index, vectors, 300)
    threshold = float(np.sort(vectors @ vectors[3])[::-1][9])
    with TestClient(create_app(collection.settings())) as client:
        result = _search(client, vectors[3], top_n=50, min_similarity=threshold)
    assert len(result["hits"]) == 10 and result["search"]["stopped"] == "min_similarity"
    assert result["search"]["rounds"] == 1


# --- ids held more than once -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["flat", "ivf"])
def duplicated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """100 records; records 0..59 were added twice (the second copy slightly moved), so the index holds 160."""
    vectors = unit_vectors(100, 8, seed=7)
    copies = vectors[:60] + np.random.default_rng(8).normal(scale=0.01, size=(60, 8)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    if request.param == "flat":
        index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 4, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add_with_ids(vectors, np.arange(100, dtype=np.int64))
    index.add_with_ids(copies, np.arange(60, dtype=np.int64))
    collection = _collection(tmp_path_factory.mktemp(f"dup-{request.param}"), index, vectors, 100)
    collection.vectors = np.concatenate([vectors, copies])
    return collection


@pytest.mark.parametrize("lookup", ["sidecar", "duckdb"])
@pytest.mark.parametrize("body", [{}, {"scope": "bioclip2_training"}, {"filters": ["order:Lepidoptera"]}])
def test_an_id_held_twice_is_one_hit_at_its_best_similarity_and_top_n_still_fills(
    duplicated: Collection, lookup: str, body: dict
) -> None:
    query = duplicated.vectors[0]
    filters = [{"rank": "order", "value": "Lepidoptera"}] if body.get("filters") else []
    with TestClient(create_app(duplicated.settings(use_sidecar=lookup == "sidecar"))) as client:
        result = _search(client, query, top_n=30, nprobe=4, **{**body, "filters": filters})
    ids = [hit["record"]["id"] for hit in result["hits"]]
    assert len(ids) == len(set(ids)) == 30 and result["search"]["stopped"] == "filled"
    sims = duplicated.vectors @ query
    best: dict[int, float] = {}
    for position, record_id in enumerate(list(range(100)) + list(range(60))):
        best[record_id] = max(best.get(record_id, -2.0), float(sims[position]))
    keep = {
        "scope": lambda r: r % 2 == 0,  # rows_for: even rows are BioCLIP-2 training rows
        "filters": lambda r: r % 2 == 1,  # odd rows are Lepidoptera
    }
    admitted = [r for r in best if all(keep[key](r) for key in body)]
    expected = sorted(admitted, key=lambda r: -best[r])[:30]
    assert ids == expected
    for hit in result["hits"]:
        assert hit["similarity"] == pytest.approx(best[hit["record"]["id"]], abs=1e-5)


# --- stored vectors that are NaN or zero -------------------------------------------------------------------


@pytest.fixture(scope="module", params=["flat", "ivf"])
def broken_vectors(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """Record 7's vector is NaN, record 8's all zeros (an IVF index files the NaN one in no list: it holds none)."""
    vectors = unit_vectors(50, 8, seed=2)
    vectors[7] = np.nan
    vectors[8] = 0.0
    if request.param == "flat":
        index: faiss.Index = faiss.IndexFlatIP(8)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 2, faiss.METRIC_INNER_PRODUCT)
        index.train(np.delete(vectors, [7, 8], axis=0))
    index.add(vectors)
    return _collection(tmp_path_factory.mktemp(f"broken-{request.param}"), index, vectors, 50)


@pytest.mark.parametrize(("record_id", "why"), [(7, "NaN"), (8, "zeros")])
def test_a_stored_vector_without_direction_is_a_422_naming_the_record(
    broken_vectors: Collection, record_id: int, why: str
) -> None:
    with TestClient(create_app(broken_vectors.settings())) as client:
        response = client.get(f"/v1/records/{record_id}/vector")
        assert client.get("/v1/records/6/vector").status_code == 200
    error = response.json()["error"]
    if why == "NaN" and broken_vectors.folder.name.startswith("broken-ivf"):
        assert (
            response.status_code == 404 and error["code"] == "unknown_record" and f"id {record_id}" in error["message"]
        )
        return
    assert response.status_code == 422, response.text
    assert error["code"] == "unusable_vector" and f"record {record_id}" in error["message"] and why in error["message"]
    assert error["details"] == {"record_id": record_id}


def test_a_nan_stored_vector_is_never_a_hit(broken_vectors: Collection) -> None:
    with TestClient(create_app(broken_vectors.settings())) as client:
        result = _search(client, broken_vectors.vectors[0], top_n=50, nprobe=2)
    ids = [hit["record"]["id"] for hit in result["hits"]]
    assert 7 not in ids and 0 in ids
    assert all(isinstance(hit["similarity"], float) for hit in result["hits"])
