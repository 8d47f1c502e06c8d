"""The collection builder: manifests, URL splitting, index choice, the optimised DuckDB form, resuming."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from collection.__main__ import main as collection_main
from collection.build import (
    BuildError,
    build_collection,
    choose_index,
    read_manifest,
    split_url,
    write_index,
    write_metadata,
)
from services.search.app import create_app
from services.search.lookup import default_sidecar_path
from services.search.settings import INDEX_FILE, METADATA_FILE, SearchSettings
from tests.search.conftest import rows_for, unit_vectors

DIM = 8


def test_csv_and_parquet_manifests_read_the_same(tmp_path: Path) -> None:
    rows = [{"url": "https://a.org/photos/1/x.jpg", "genus": "Apis", "species": "mellifera", "source_id": "0012"}]
    (tmp_path / "m.csv").write_text("url,genus,species,source_id\nhttps://a.org/photos/1/x.jpg,Apis,mellifera,0012\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.csv") == rows == read_manifest(tmp_path / "m.parquet")


def test_manifest_without_url_or_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("genus,species\nApis,mellifera\n")
    with pytest.raises(BuildError, match="`url` or a `path`"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_of_unknown_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(BuildError, match="csv"):
        read_manifest(tmp_path / "m.xlsx")


@pytest.mark.parametrize(
    ("url", "prefix", "suffix"),
    [
        ("https://inaturalist-open-data.s3.amazonaws.com/photos/1/original.jpg",
         "https://inaturalist-open-data.s3.amazonaws.com/photos", "/1/original.jpg"),
        ("http://127.0.0.1:8010/a.jpg", "http://127.0.0.1:8010", "/a.jpg"),
    ],
)  # fmt: skip
def test_urls_split_into_a_shared_prefix_and_a_suffix(url: str, prefix: str, suffix: str) -> None:
    assert split_url(url) == (prefix, suffix)
    assert prefix + suffix == url


def test_index_type_follows_collection_size() -> None:
    assert choose_index(5_000, 768, "auto") == "Flat"
    assert choose_index(2_000_000, 768, "auto").endswith(",PQ16")
    assert choose_index(2_000_000, 768, "auto").startswith("IVF")
    assert choose_index(5_000, 768, "ivfpq").startswith("IVF")
    assert choose_index(5_000, 768, "HNSW32") == "HNSW32"


def test_metadata_file_is_written_in_the_optimised_form(tmp_path: Path) -> None:
    path = tmp_path / "metadata.duckdb"
    write_metadata(rows_for(40), path)
    con = duckdb.connect(str(path), read_only=True)
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='metadata'"
        ).fetchall()
    )
    assert types["id"] == "INTEGER" and types["uuid"] == "UUID" and types["url_prefix_id"] == "USMALLINT"
    assert types["has_url"] == "BOOLEAN" and types["in_bioclip2_training"] == "BOOLEAN"
    # Low-cardinality columns are ENUMs; the many-valued ones stay VARCHAR.
    assert types["order"] == "ENUM('Coleoptera', 'Lepidoptera')"
    assert types["source_dataset"] == "ENUM('eol', 'gbif')"
    assert types["genus"] == "VARCHAR" and types["identifier_suffix"] == "VARCHAR"
    prefixes = con.execute("SELECT prefix FROM url_prefixes").fetchall()
    assert prefixes == [("https://inaturalist-open-data.s3.amazonaws.com/photos",)]
    assert con.execute("SELECT identifier_suffix FROM metadata WHERE id = 20").fetchall() == [("/20/original.jpg",)]
    assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'metadata'").fetchall() == [(1,)]
    # Rows are stored sorted by taxonomy, not by id.
    stored = [row[0] for row in con.execute('SELECT "order"::VARCHAR FROM metadata').fetchall()]
    assert stored == sorted(stored) and stored[0] == "Coleoptera"
    con.close()
    assert (default_sidecar_path(path) / "manifest.json").is_file()


def test_index_is_trained_on_a_sample_and_filled_with_every_vector(tmp_path: Path) -> None:
    vectors = unit_vectors(1000, 16, seed=2) * 3.0  # not unit length: the builder normalises
    write_index(vectors, "IVF8,Flat", tmp_path / "i.index")
    index = faiss.read_index(str(tmp_path / "i.index"))
    assert index.ntotal == 1000 and index.is_trained
    ivf = faiss.extract_index_ivf(index)
    ivf.make_direct_map()
    assert np.linalg.norm(index.reconstruct(0)) == pytest.approx(1.0, abs=1e-5)
    _, ids = index.search(unit_vectors(1000, 16, seed=2)[:1], 1)
    assert ids[0, 0] == 0


@dataclass
class StandInEmbedder:
    """An HTTP service on 127.0.0.1 answering /v1/embed/image like the embedder: one vector per upload."""

    url: str = ""
    requests: list[list[int]] = field(default_factory=list)
    fail_from_request: int | None = None  # answer 500 from this request on (a crash mid-build)

    def vectors_for(self, rows: list[int]) -> np.ndarray:
        return np.stack([_row_vector(row) for row in rows])


def _row_vector(row: int) -> np.ndarray:
    vector = np.random.default_rng(row).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def embedder() -> Iterator[StandInEmbedder]:
    state = StandInEmbedder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rows = [int(found) for found in re.findall(rb'filename="row-(\d+)"', body)]
            state.requests.append(rows)
            failing = state.fail_from_request is not None and len(state.requests) > state.fail_from_request
            status = 500 if failing else 200
            payload = {"vectors": state.vectors_for(rows).tolist()} if status == 200 else {"error": "down"}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _manifest(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows_for(count)
    for i, row in enumerate(rows):
        (folder / f"{i}.jpg").write_bytes(f"image {i}".encode())
        row["path"] = f"{i}.jpg"
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    return folder / "manifest.parquet"


def test_an_interrupted_build_resumes_from_its_saved_chunks(tmp_path: Path, embedder: StandInEmbedder) -> None:
    manifest = _manifest(tmp_path / "in", 24)
    out = tmp_path / "out"
    embedder.fail_from_request = 3  # batches of 4 rows, chunks of 8: the second chunk fails
    with pytest.raises(BuildError, match="the embedder failed"):
        build_collection(manifest, embedder=embedder.url, out=out, batch_size=4, chunk_rows=8)
    assert sorted(path.name for path in (out / ".building" / "embedding").glob("chunk-*.npz")) == [
        "chunk-000000000000.npz"
    ]
    embedder.fail_from_request = None
    embedder.requests.clear()
    summary = build_collection(manifest, embedder=embedder.url, out=out, batch_size=4, chunk_rows=8)
    assert summary["records"] == 24 and summary["skipped"] == 0
    # Only the rows after the saved chunk went to the embedder again.
    assert sorted(row for batch in embedder.requests for row in batch) == list(range(8, 24))
    assert not (out / ".building").exists()
    with TestClient(create_app(SearchSettings(data_dir=out, blocking_threads=2))) as client:
        for row in (0, 13, 23):
            body = {"vectors": [_row_vector(row).tolist()], "top_n": 1}
            assert client.post("/v1/search", json=body).json()["results"][0]["hits"][0]["record"]["id"] == row


def test_resuming_with_a_manifest_of_another_length_is_refused(tmp_path: Path, embedder: StandInEmbedder) -> None:
    manifest = _manifest(tmp_path / "in", 16)
    out = tmp_path / "out"
    embedder.fail_from_request = 2
    with pytest.raises(BuildError):
        build_collection(manifest, embedder=embedder.url, out=out, batch_size=4, chunk_rows=8)
    embedder.fail_from_request = None
    shorter = _manifest(tmp_path / "in2", 12)
    with pytest.raises(BuildError, match=r"the manifest has 12 rows but the embeddings saved .* are for 16 rows"):
        build_collection(shorter, embedder=embedder.url, out=out, batch_size=4, chunk_rows=8)
    # --restart discards what was saved.
    summary = build_collection(shorter, embedder=embedder.url, out=out, batch_size=4, chunk_rows=8, restart=True)
    assert summary["records"] == 12


def test_ready_made_embeddings_build_a_collection_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = rows_for(30)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    vectors = unit_vectors(30, DIM, seed=4)
    np.save(tmp_path / "vectors.npy", vectors)
    code = collection_main(
        ["build", "--manifest", str(tmp_path / "rows.parquet"), "--embeddings", str(tmp_path / "vectors.npy"),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    assert "built 30 records (0 skipped), 8-d, index Flat" in capsys.readouterr().out
    assert (tmp_path / "out" / INDEX_FILE).is_file() and (tmp_path / "out" / METADATA_FILE).is_file()


def test_embeddings_whose_count_differs_from_the_manifest_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq.write_table(pa.Table.from_pylist(rows_for(30)), tmp_path / "rows.parquet")
    np.save(tmp_path / "vectors.npy", unit_vectors(29, DIM))
    code = collection_main(
        ["build", "--manifest", str(tmp_path / "rows.parquet"), "--embeddings", str(tmp_path / "vectors.npy"),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 1
    error = capsys.readouterr().err
    assert "the manifest has 30 rows but" in error and "holds 29 embeddings" in error
    assert not (tmp_path / "out" / INDEX_FILE).exists()
