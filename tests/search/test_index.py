"""Index types, memory mapping, the HNSW coarse quantizer, efSearch and reading vectors back."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from collection.build import write_metadata
from services.search.app import create_app
from services.search.settings import INDEX_FILE, METADATA_FILE
from tests.search.conftest import Collection, rows_for, unit_vectors, write_collection


def test_flat_index_gives_back_the_exact_stored_vector(client: TestClient, collection: Collection) -> None:
    response = client.get("/v1/records/17/vector")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == 17 and body["dim"] == 16 and body["exact"] is True and body["encoding"] == "IndexFlatIP"
    assert np.allclose(body["vector"], collection.vectors[17], atol=1e-6)


def test_vector_of_an_unknown_record_is_404_and_a_bad_id_422(client: TestClient) -> None:
    missing = client.get("/v1/records/5000/vector")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_record"
    assert client.get("/v1/records/-3/vector").status_code == 422


@pytest.fixture(scope="module")
def ivfpq(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    folder = tmp_path_factory.mktemp("ivfpq")
    return write_collection(folder, unit_vectors(2000, 16, seed=5), rows_for(2000), factory="IVF16,PQ8x4")


def test_ivf_pq_vector_is_the_decoded_approximation(ivfpq: Collection) -> None:
    with TestClient(create_app(ivfpq.settings(mmap=True))) as client:
        body = client.get("/v1/records/1234/vector").json()
    assert body["exact"] is False and body["encoding"] == "IndexIVFPQ"
    vector = np.asarray(body["vector"])
    cosine = vector @ ivfpq.vectors[1234] / np.linalg.norm(vector)
    assert 0.8 < cosine < 0.9999  # close to the original, not equal to it


def test_ivf_vector_without_a_direct_map_is_501(ivfpq: Collection) -> None:
    with TestClient(create_app(ivfpq.settings(direct_map="off"))) as client:
        response = client.get("/v1/records/12/vector")
        assert client.get("/v1/stats").json()["reconstruct"] is False
    assert response.status_code == 501 and response.json()["error"]["code"] == "not_reconstructable"


def test_vector_round_trips_through_search_to_its_own_record(ivfpq: Collection) -> None:
    with TestClient(create_app(ivfpq.settings(direct_map="startup"))) as client:
        vector = client.get("/v1/records/321/vector").json()["vector"]
        hits = client.post("/v1/search", json={"vectors": [vector], "top_n": 1, "nprobe": 16}).json()
    assert hits["results"][0]["hits"][0]["record"]["id"] == 321


@pytest.fixture(scope="module")
def ivf64(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    folder = tmp_path_factory.mktemp("ivf64")
    return write_collection(folder, unit_vectors(4000, 16, seed=6), rows_for(4000), factory="IVF64,Flat")


def test_hnsw_coarse_quantizer_finds_what_the_flat_one_finds_and_is_cached(ivf64: Collection, tmp_path: Path) -> None:
    queries = ivf64.vectors[[5, 500, 3999]].tolist()
    found = {}
    for mode in ("flat", "hnsw", "hnsw"):
        settings = ivf64.settings(coarse_quantizer=mode, cache_dir=tmp_path / "cache")
        with TestClient(create_app(settings)) as client:
            assert client.get("/v1/stats").json()["coarse_quantizer"] == mode
            body = client.post("/v1/search", json={"vectors": queries, "top_n": 5, "nprobe": 8}).json()
        found[mode] = [[hit["record"]["id"] for hit in result["hits"]] for result in body["results"]]
        assert [result["search"]["ef_search"] for result in body["results"]] == (
            [None] * 3 if mode == "flat" else [64] * 3
        )
    assert found["hnsw"] == found["flat"]
    assert [ids[0] for ids in found["hnsw"]] == [5, 500, 3999]
    assert len(list((tmp_path / "cache").glob("coarse-hnsw-*.index"))) == 1


def test_auto_keeps_a_flat_quantizer_for_few_lists(ivf64: Collection, tmp_path: Path) -> None:
    with TestClient(create_app(ivf64.settings(cache_dir=tmp_path / "cache"))) as client:
        assert client.get("/v1/stats").json()["coarse_quantizer"] == "flat"
    assert not (tmp_path / "cache").exists()


def test_hnsw_index_uses_ef_search_of_at_least_the_candidates_asked(tmp_path: Path) -> None:
    vectors = unit_vectors(500, 16, seed=8)
    collection = write_collection(tmp_path, vectors, rows_for(500), factory="HNSW16")
    with TestClient(create_app(collection.settings(mmap=True))) as client:
        stats = client.get("/v1/stats").json()
        body = client.post("/v1/search", json={"vectors": [vectors[9].tolist()], "top_n": 12, "ef_search": 5}).json()
        wide = client.post("/v1/search", json={"vectors": [vectors[9].tolist()], "top_n": 3, "ef_search": 200}).json()
        stored = client.get("/v1/records/9/vector").json()
    assert stats["index_type"] == "IndexHNSWFlat" and stats["nlist"] is None
    assert body["results"][0]["hits"][0]["record"]["id"] == 9
    assert body["results"][0]["search"]["ef_search"] == 12 and wide["results"][0]["search"]["ef_search"] == 200
    assert stored["exact"] is True and np.allclose(stored["vector"], vectors[9], atol=1e-6)


def test_flat_index_memory_mapped_searches_the_same(collection: Collection) -> None:
    with TestClient(create_app(collection.settings(mmap=True))) as client:
        body = client.post("/v1/search", json={"vectors": [collection.vectors[33].tolist()], "top_n": 3}).json()
    expected = np.argsort(-(collection.vectors @ collection.vectors[33]))[:3].tolist()
    assert [hit["record"]["id"] for hit in body["results"][0]["hits"]] == expected


def test_l2_index_reports_cosine_similarity(tmp_path: Path) -> None:
    vectors = unit_vectors(100, 16, seed=10)
    index = faiss.IndexFlatL2(16)
    index.add(vectors)
    (tmp_path / INDEX_FILE).parent.mkdir(parents=True)
    faiss.write_index(index, str(tmp_path / INDEX_FILE))
    write_metadata(rows_for(100), tmp_path / METADATA_FILE)
    with TestClient(create_app(Collection(tmp_path, vectors, []).settings())) as client:
        hits = client.post("/v1/search", json={"vectors": [vectors[4].tolist()], "top_n": 2}).json()
    first, second = hits["results"][0]["hits"]
    assert first["record"]["id"] == 4 and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert second["similarity"] == pytest.approx(float(np.sort(vectors @ vectors[4])[-2]), abs=1e-5)
