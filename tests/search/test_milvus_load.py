"""Loading a collection into Milvus: the builder's exact vectors, the IVF-PQ file's reconstructions, and refusals."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from collection.__main__ import main as collection_main
from collection.build import build_collection
from services.common.vocabulary import TaxonFilter
from services.search.app import create_app
from services.search.filters import Criteria
from services.search.milvus import filter_expression, taxon_code
from services.search.settings import INDEX_FILE, SearchSettings
from tests.search.conftest import MilvusLite, rows_for, unit_vectors, write_collection


def test_build_with_milvus_loads_the_exact_vectors_the_service_then_finds(tmp_path: Path, milvus: MilvusLite) -> None:
    rows = [{k: v for k, v in row.items() if v is not None} for row in rows_for(60)]
    manifest = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    vectors = unit_vectors(60, 16, seed=8) * 3.0  # the builder normalises, as it does for the FAISS index
    np.save(tmp_path / "vectors.npy", vectors)
    out = tmp_path / "data"
    summary = build_collection(
        manifest, embedder=None, out=out, embeddings=tmp_path / "vectors.npy", milvus=milvus.uri,
        milvus_collection="built",
    )  # fmt: skip
    assert summary["milvus"]["vectors"] == 60 and summary["milvus"]["exact"] is True
    settings = SearchSettings(
        backend="milvus", milvus_uri=milvus.uri, milvus_collection="built", data_dir=out, blocking_threads=2
    )
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/records/7/vector").json()
        assert body["exact"] is True and np.allclose(body["vector"], vectors[7] / 3.0, atol=1e-6)
        hit = client.post("/v1/search", json={"vectors": [vectors[7].tolist()], "top_n": 1}).json()
        assert hit["results"][0]["hits"][0]["record"]["id"] == 7


def test_an_ivf_pq_file_loads_its_reconstructions_and_milvus_ranks_as_exact_search_over_them(
    tmp_path: Path, milvus: MilvusLite
) -> None:
    vectors = unit_vectors(1500, 16, seed=11)
    collection = write_collection(tmp_path, vectors, rows_for(1500), factory="IVF8,PQ4x4")
    index = faiss.read_index(str(tmp_path / INDEX_FILE))
    faiss.extract_index_ivf(index).make_direct_map()
    decoded = index.reconstruct_n(0, index.ntotal)
    queries = [3, 500, 1200]
    with TestClient(create_app(collection.settings(**milvus.settings(collection)))) as client:
        vector = client.get("/v1/records/500/vector").json()
        assert vector["exact"] is False and vector["encoding"] == "IndexIVFPQ"
        assert np.allclose(vector["vector"], decoded[500], atol=1e-6)
        body = {"vectors": vectors[queries].tolist(), "top_n": 5}
        results = client.post("/v1/search", json=body).json()["results"]
    for query, result in zip(queries, results, strict=True):
        exact = np.argsort(-(decoded @ vectors[query]), kind="stable")[:5]
        assert [hit["record"]["id"] for hit in result["hits"]] == exact.tolist()


def test_milvus_load_without_a_sidecar_fails_with_a_message(
    tmp_path: Path, milvus: MilvusLite, capsys: pytest.CaptureFixture[str]
) -> None:
    collection = write_collection(tmp_path, unit_vectors(20, 16), rows_for(20))
    folder = collection.folder / "duckdb" / "metadata.lookup"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    status = collection_main(["milvus-load", "--data", str(collection.folder), "--uri", milvus.uri])
    assert status == 1 and "no lookup sidecar" in capsys.readouterr().err


def test_filter_expression_names_only_schema_fields_and_integer_codes() -> None:
    criteria = Criteria(scope="inaturalist", filters=(TaxonFilter(rank="species", value="Danaus  PLEXIPPUS"),))
    expected = f"scope_inaturalist == true and taxon_binomial == {taxon_code('danaus plexippus')}"
    assert filter_expression(criteria) == expected
    quote = Criteria(scope="all", filters=(TaxonFilter(rank="genus", value='x" or true or "'),))
    assert filter_expression(quote) == f"taxon_genus == {taxon_code(quote.filters[0].key)}"
    assert filter_expression(Criteria()) == ""


def test_an_ivf_flat_load_is_built_with_the_lists_the_search_service_probes(tmp_path: Path, milvus: MilvusLite) -> None:
    # 400 vectors: the loader asks for 400 // 39 = 10 lists, and the service probes all 10 by default. Milvus must
    # build those 10 (milvus-lite's own default is 128, of which 10 would see about a thirteenth of the vectors).
    vectors = unit_vectors(400, 16, seed=21)
    collection = write_collection(tmp_path, vectors, rows_for(400))
    queries = unit_vectors(5, 16, seed=22)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    with TestClient(create_app(collection.settings(**milvus.settings(collection, "IVF_FLAT")))) as client:
        stats = client.get("/v1/stats").json()
        assert stats["index_type"] == "Milvus IVF_FLAT" and stats["nlist"] == 10 == stats["default_nprobe"]
        results = client.post("/v1/search", json={"vectors": queries.tolist(), "top_n": 10}).json()["results"]
    found = [[hit["record"]["id"] for hit in result["hits"]] for result in results]
    assert found == exact.tolist()
