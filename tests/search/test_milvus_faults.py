"""A Milvus server that stalls or goes away under a running search service: 504 and 503 naming Milvus, never a 500.

The server is milvus-lite's own gRPC server (`milvus-lite server`) as a process on 127.0.0.1, stopped with SIGSTOP
(a stall: the connection stays open, nothing answers) and then killed (the port refuses connections)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collection.milvus_load import load_collection
from services.search.app import create_app
from services.search.settings import INDEX_FILE, METADATA_FILE
from tests.search.conftest import rows_for, unit_vectors, write_collection

SERVER = "import sys; from milvus_lite.cmdline import main; sys.exit(main())"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the milvus-lite server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no milvus-lite server on port {port} after {seconds} s")


@pytest.fixture
def milvus_server(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, "server", "--data-dir", str(tmp_path / "milvus"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, process)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(timeout=30)


def test_a_stalled_then_gone_milvus_answers_504_then_503_naming_milvus(
    tmp_path: Path, milvus_server: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, uri = milvus_server
    vectors = unit_vectors(120, 16, seed=31)
    collection = write_collection(tmp_path / "data", vectors, rows_for(120))
    load_collection(
        metadata=collection.folder / METADATA_FILE, uri=uri, collection="faults",
        index=collection.folder / INDEX_FILE, index_type="FLAT",
    )  # fmt: skip
    settings = collection.settings(backend="milvus", milvus_uri=uri, milvus_collection="faults", milvus_timeout_s=1.0)
    body = {"vectors": [vectors[3].tolist()], "top_n": 3}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/v1/search", json=body).json()["results"][0]["hits"][0]["record"]["id"] == 3
        os.kill(process.pid, signal.SIGSTOP)
        stalled = [client.post("/v1/search", json=body), client.get("/v1/records/3/vector")]
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(timeout=30)
        gone = [client.post("/v1/search", json=body), client.get("/v1/records/3/vector")]
    assert stalled[0].status_code == 504, stalled[0].text
    assert stalled[0].json()["error"]["code"] == "upstream_timeout"
    # After a deadline pymilvus reconnects first, which a stalled server cannot accept either: 503 or 504.
    assert stalled[1].status_code in (503, 504), stalled[1].text
    assert all("Milvus" in response.json()["error"]["message"] for response in stalled)
    for response in gone:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert "Milvus" in response.json()["error"]["message"]
