"""The search app on real FAISS and DuckDB files with known neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.search.app import create_app
from services.search.milvus import connect
from services.search.settings import INDEX_FILE, METADATA_FILE
from tests.search.conftest import Collection, MilvusLite, rows_for, unit_vectors, write_collection


def test_each_vector_finds_its_own_record_first(client: TestClient, collection: Collection) -> None:
    picks = [0, 17, 123, 199]
    response = client.post("/v1/search", json={"vectors": collection.vectors[picks].tolist(), "top_n": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(picks)
    for pick, result in zip(picks, results, strict=True):
        hits = result["hits"]
        assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
        assert hits[0]["record"]["id"] == pick
        assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
        similarities = [hit["similarity"] for hit in hits]
        assert similarities == sorted(similarities, reverse=True)
        expected = np.argsort(-(collection.vectors @ collection.vectors[pick]))[:5]
        assert [hit["record"]["id"] for hit in hits] == expected.tolist()


def test_hits_carry_the_metadata_row_and_the_rebuilt_url(client: TestClient, collection: Collection) -> None:
    hit = client.post("/v1/search", json={"vectors": [collection.vectors[20].tolist()], "top_n": 1}).json()["results"][
        0
    ]["hits"][0]
    record = hit["record"]
    assert record["id"] == 20
    assert record["url"] == "https://inaturalist-open-data.s3.amazonaws.com/photos/20/original.jpg"
    assert record["has_url"] is True
    assert record["class"] == "Insecta" and record["order"] == "Coleoptera" and record["genus"] == "Genus9"
    assert record["species"] == "epithet20" and record["scientific_name"] == "Genus9 epithet20"
    assert record["source_id"] == "1020" and record["basis_of_record"] == "HUMAN_OBSERVATION"


def test_unnormalised_query_vectors_are_normalised_first(client: TestClient, collection: Collection) -> None:
    scaled = (collection.vectors[5] * 7.5).tolist()
    hit = client.post("/v1/search", json={"vectors": [scaled], "top_n": 1}).json()["results"][0]["hits"][0]
    assert hit["record"]["id"] == 5 and hit["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_scope_fills_top_n_when_it_matches_five_percent_of_rows(client: TestClient, collection: Collection) -> None:
    body = {"vectors": [collection.vectors[3].tolist()], "top_n": 8, "scope": "url_only"}
    result = client.post("/v1/search", json=body).json()["results"][0]
    assert len(result["hits"]) == 8
    assert all(hit["record"]["has_url"] for hit in result["hits"])
    assert result["exhausted"] is False
    ids = [hit["record"]["id"] for hit in result["hits"]]
    in_scope = [i for i in np.argsort(-(collection.vectors @ collection.vectors[3])) if i % 20 == 0]
    assert ids == [int(i) for i in in_scope[:8]]


def test_scope_with_fewer_matches_than_top_n_says_so(client: TestClient, collection: Collection) -> None:
    body = {"vectors": [collection.vectors[3].tolist()], "top_n": 50, "scope": "url_only"}
    result = client.post("/v1/search", json=body).json()["results"][0]
    assert len(result["hits"]) == 10  # 200 rows, one in 20 with a URL
    assert result["exhausted"] is True


@pytest.mark.parametrize(
    ("scope", "check"),
    [
        ("bioclip2_training", lambda r: r["in_bioclip2_training"]),
        ("inaturalist", lambda r: r["has_url"] and r["source_dataset"] == "gbif" and "iNaturalist" in r["publisher"]),
    ],
)
def test_every_scope_keeps_only_its_records(client: TestClient, collection: Collection, scope: str, check) -> None:  # type: ignore[no-untyped-def]
    body = {"vectors": [collection.vectors[0].tolist()], "top_n": 3, "scope": scope}
    hits = client.post("/v1/search", json=body).json()["results"][0]["hits"]
    assert hits and all(check(hit["record"]) for hit in hits)


def test_record_by_id_and_unknown_record(client: TestClient) -> None:
    record = client.get("/v1/records/40").json()
    assert record["id"] == 40 and record["url"].endswith("/photos/40/original.jpg")
    missing = client.get("/v1/records/5000")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_record"


def test_stats_describe_index_and_metadata(client: TestClient, backend: str) -> None:
    stats = client.get("/v1/stats").json()
    index_type = {"faiss": "IndexFlatIP", "milvus": "Milvus FLAT"}[backend]
    assert stats == {
        "backend": backend, "index_type": index_type, "vectors": 200, "dim": 16, "nlist": None,
        "default_nprobe": None, "metric": "inner_product", "metadata_rows": 200, "url_layout": "url_prefixes",
        "coarse_quantizer": None, "lookup": "sidecar", "reconstruct": True, "max_candidates": 10_000,
        "max_nprobe": None, "collection": None,
        "similarity_scale": None,  # every record its own species: nothing to measure
    }  # fmt: skip


def test_stats_name_the_collection_pinned_in_the_data_folders_lock_file(tmp_path: Path) -> None:
    collection = write_collection(tmp_path / "data", unit_vectors(50, 16), rows_for(50))
    pin = {"repo": "imageomics/bioclip-image-search-lite", "revision": "main", "commit": "ab" * 20}
    lock = {"format": 1, "parts": {"collection": {**pin, "repo_type": "model", "files": {}}}}
    (collection.folder / "hub.lock.json").write_text(json.dumps(lock))
    with TestClient(create_app(collection.settings())) as client:
        assert client.get("/v1/stats").json()["collection"] == pin
    # An index named elsewhere is not the one the lock file speaks for.
    elsewhere = write_collection(tmp_path / "other", unit_vectors(50, 16), rows_for(50))
    settings = collection.settings(index_path=elsewhere.folder / INDEX_FILE)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/stats").json()["collection"] is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"vectors": [[0.1] * 15]}, "dimension_mismatch"),
        ({"vectors": [[0.0] * 16]}, "invalid_vector"),
        ({"vectors": [[0.1] * 16], "top_n": 0}, "invalid_request"),
        ({"vectors": [[0.1] * 16], "top_n": 201}, "invalid_request"),
        ({"vectors": [[0.1] * 16], "nprobe": 0}, "invalid_request"),
        ({"vectors": [[0.1] * 16], "scope": "everything"}, "invalid_request"),
        ({"vectors": []}, "invalid_request"),
        ({"top_n": 5}, "invalid_request"),
    ],
    ids=["wrong-length", "zero", "top_n-0", "top_n-201", "nprobe-0", "unknown-scope", "no-vectors", "missing-field"],
)
def test_bad_search_requests_get_422_with_a_message(client: TestClient, body: dict, code: str) -> None:
    response = client.post("/v1/search", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/records/-1", "/v1/records/abc", "/v1/records/99999999999"])
def test_bad_record_ids_get_422(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_ivf_index_clamps_nprobe_to_nlist_and_still_finds_neighbours(tmp_path: Path) -> None:
    vectors = unit_vectors(2000, 16, seed=3)
    collection = write_collection(tmp_path, vectors, rows_for(2000), factory="IVF8,Flat")
    with TestClient(create_app(collection.settings(mmap=True))) as client:
        stats = client.get("/v1/stats").json()
        assert stats["index_type"] == "IndexIVFFlat" and stats["nlist"] == 8 and stats["default_nprobe"] == 8
        response = client.post("/v1/search", json={"vectors": [vectors[42].tolist()], "top_n": 3, "nprobe": 500})
        assert response.json()["nprobe"] == 8
        assert response.json()["results"][0]["hits"][0]["record"]["id"] == 42
        one_list = client.post("/v1/search", json={"vectors": [vectors[42].tolist()], "top_n": 3, "nprobe": 1})
        assert one_list.json()["nprobe"] == 1


def test_legacy_identifier_column_gives_the_url(tmp_path: Path, collection: Collection) -> None:
    legacy = tmp_path / "legacy"
    (legacy / INDEX_FILE).parent.mkdir(parents=True)
    (legacy / INDEX_FILE).write_bytes((collection.folder / INDEX_FILE).read_bytes())
    (legacy / METADATA_FILE).parent.mkdir(parents=True)
    con = duckdb.connect(str(legacy / METADATA_FILE))
    con.execute("ATTACH ? AS new (READ_ONLY)", [str(collection.folder / METADATA_FILE)])
    con.execute(
        """CREATE TABLE metadata AS SELECT m.* EXCLUDE (url_prefix_id, identifier_suffix),
           CASE WHEN m.has_url THEN p.prefix || m.identifier_suffix END AS identifier
           FROM new.metadata m LEFT JOIN new.url_prefixes p ON m.url_prefix_id = p.prefix_id"""
    )
    con.close()
    with TestClient(create_app(collection.settings(data_dir=legacy))) as client:
        assert client.get("/v1/stats").json()["url_layout"] == "identifier"
        assert client.get("/v1/records/60").json()["url"].endswith("/photos/60/original.jpg")
        assert client.get("/v1/records/61").json()["url"] is None


def test_missing_index_file_stops_start_up_with_its_path(tmp_path: Path, collection: Collection) -> None:
    settings = collection.settings(index_path=tmp_path / "nowhere.index")
    with pytest.raises(RuntimeError, match=r"nowhere\.index"), TestClient(create_app(settings)):
        pass


def test_milvus_ivf_clamps_nprobe_to_nlist_and_still_finds_neighbours(tmp_path: Path, milvus: MilvusLite) -> None:
    vectors = unit_vectors(2000, 16, seed=3)
    collection = write_collection(tmp_path, vectors, rows_for(2000))
    settings = collection.settings(**milvus.settings(collection, "IVF_FLAT", nlist=8))
    with TestClient(create_app(settings)) as client:
        stats = client.get("/v1/stats").json()
        assert stats["index_type"] == "Milvus IVF_FLAT" and stats["nlist"] == 8 and stats["default_nprobe"] == 8
        response = client.post("/v1/search", json={"vectors": [vectors[42].tolist()], "top_n": 3, "nprobe": 500})
        assert response.json()["nprobe"] == 8
        assert response.json()["results"][0]["hits"][0]["record"]["id"] == 42


def test_missing_milvus_collection_stops_start_up_naming_it(collection: Collection, milvus: MilvusLite) -> None:
    settings = collection.settings(backend="milvus", milvus_uri=milvus.uri, milvus_collection="nowhere")
    with pytest.raises(RuntimeError, match=r"'nowhere'.*milvus-load"), TestClient(create_app(settings)):
        pass


def test_a_milvus_collection_of_another_metadata_file_is_refused(tmp_path: Path, milvus: MilvusLite) -> None:
    first = write_collection(tmp_path / "first", unit_vectors(30, 16), rows_for(30))
    other = write_collection(tmp_path / "other", unit_vectors(40, 16), rows_for(40))
    settings = other.settings(**milvus.settings(first))
    with pytest.raises(RuntimeError, match="another metadata file"), TestClient(create_app(settings)):
        pass


def test_a_milvus_that_went_away_is_a_503_naming_it(collection: Collection, milvus: MilvusLite) -> None:
    settings = collection.settings(**milvus.settings(collection))
    operator = connect(milvus.uri)
    with TestClient(create_app(settings)) as client:
        operator.release_collection(settings.milvus_collection)
        try:
            response = client.post("/v1/search", json={"vectors": [collection.vectors[0].tolist()], "top_n": 3})
        finally:
            operator.load_collection(settings.milvus_collection)
            operator.close()
    assert response.status_code in (502, 503), response.text
    assert response.json()["error"]["code"].startswith("upstream")
    assert "Milvus" in response.json()["error"]["message"]
