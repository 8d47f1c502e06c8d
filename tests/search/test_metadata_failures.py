"""DuckDB failing under a search: a 503 that names the metadata store, never a bare 500; and queries a
shutdown can interrupt instead of waiting them out."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from services.search.app import create_app
from services.search.errors import MetadataUnavailable
from services.search.metadata import MetadataStore
from services.search.settings import METADATA_FILE
from tests.search.conftest import Collection, rows_for, unit_vectors, write_collection


@pytest.fixture(scope="module")
def rows_3000(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    return write_collection(tmp_path_factory.mktemp("rows"), unit_vectors(3000, 16), rows_for(3000))


def test_duckdb_out_of_memory_is_a_503_naming_the_metadata_store_with_retry_after(rows_3000: Collection) -> None:
    """As at full size, where row lookups pin the id index's nodes until DuckDB's memory limit is reached."""
    settings = rows_3000.settings(use_sidecar=False, duckdb_memory_limit="1MB", similarity_scale_samples=0)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/search", json={"vectors": [rows_3000.vectors[0].tolist()], "top_n": 50})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    error = answer.json()["error"]
    assert error["code"] == "metadata_unavailable"
    assert "DuckDB" in error["message"] and "memory limit" in error["message"]


def test_interrupt_stops_a_running_query_as_metadata_unavailable(rows_3000: Collection) -> None:
    store = MetadataStore(rows_3000.folder / METADATA_FILE, threads=1)
    outcome: list[BaseException | None] = []

    def long_query() -> None:
        try:
            with store._cursor() as cursor:
                cursor.execute("SELECT sum(i) FROM range(100000000000) t(i)").fetchall()
            outcome.append(None)
        except BaseException as exc:  # the test inspects it
            outcome.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    try:
        time.sleep(0.5)
        began = time.monotonic()
        store.interrupt()
        worker.join(timeout=10)
        assert not worker.is_alive(), "the query was not interrupted"
        assert time.monotonic() - began < 5
        assert isinstance(outcome[0], MetadataUnavailable)
        assert "shutting down" in outcome[0].message
    finally:
        store.close()


def test_a_store_with_nothing_running_interrupts_nothing(rows_3000: Collection) -> None:
    store = MetadataStore(rows_3000.folder / METADATA_FILE, threads=1)
    try:
        store.interrupt()
        assert set(store.fetch([0, 1])) == {0, 1}  # still answers afterwards
    finally:
        store.close()


def test_taxon_names_that_failed_to_load_are_a_503_naming_duckdb_not_not_ready_forever(
    rows_3000: Collection,
) -> None:
    """The names come from DuckDB's GROUP BYs without a sidecar; out of memory there is transient, so the service
    tries again and says when, and a shutdown does not wait for the next try."""
    settings = rows_3000.settings(use_sidecar=False, duckdb_memory_limit="1MB", similarity_scale_samples=0)
    client = TestClient(create_app(settings))
    with client:
        for _ in range(200):
            answer = client.get("/v1/taxa", params={"prefix": "a"})
            if answer.json()["error"]["code"] != "not_ready":
                break
            time.sleep(0.05)
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "metadata_unavailable"
        assert "taxon names" in error["message"] and "memory limit" in error["message"]
        assert "tries again" in error["message"]
        assert 1 <= int(answer.headers["retry-after"]) <= 5
        closing = time.monotonic()
    assert time.monotonic() - closing < 3, "the shutdown waited for the next try"
