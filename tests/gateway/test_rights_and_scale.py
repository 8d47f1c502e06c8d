"""Through the gateway, with real search services behind it on 127.0.0.1: a collection's licence and rights
columns reach records and both exports (and their columns are there, empty, for a collection without them);
the similarity scale the search service measured reaches GET /api/info."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collection.build import write_index, write_metadata
from gateway.app import create_app as create_gateway
from gateway.export import HIT_COLUMNS
from gateway.settings import GatewaySettings
from services.search.app import create_app as create_search
from services.search.settings import INDEX_FILE, METADATA_FILE, SearchSettings
from tests.gateway.conftest import serving
from tests.search.test_scale import clustered


def _collection(folder: Path, *, rights: bool) -> Path:
    vectors, rows = clustered()
    for i, row in enumerate(rows):
        row["url"] = f"https://example.org/{i}.jpg"
        row["source_dataset"], row["source_id"] = "gbif", str(5000 + i)
        if rights:
            row |= {"license": "CC-BY-NC-4.0" if i % 2 else "CC0-1.0", "rightsHolder": f"Observer {i}"}
    write_index(vectors, "Flat", folder / INDEX_FILE)
    write_metadata(rows, folder / METADATA_FILE)
    return folder


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    work = tmp_path_factory.mktemp("rights")
    licensed = SearchSettings(data_dir=_collection(work / "licensed", rights=True), blocking_threads=2)
    plain = SearchSettings(
        data_dir=_collection(work / "plain", rights=False), blocking_threads=2, similarity_scale_samples=0
    )
    with serving(create_search(licensed)) as licensed_url, serving(create_search(plain)) as plain_url:
        clients = {}
        for name, url in (("licensed", licensed_url), ("plain", plain_url)):
            # No embedder or fetcher: these requests search from records and ask for no image or prediction.
            settings = GatewaySettings(embedder_url=url, search_url=url, fetcher_url=url)
            clients[name] = TestClient(create_gateway(settings)).__enter__()
        try:
            yield clients
        finally:
            for client in clients.values():
                client.__exit__(None, None, None)


def _export(client: TestClient, format: str) -> Any:
    response = client.get(f"/api/search?record=3&top_n=4&predict=false&format={format}")
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text))) if format == "csv" else json.loads(response.text)


def test_a_record_view_carries_the_licence_and_rights_holder(gateways: dict[str, TestClient]) -> None:
    record = gateways["licensed"].get("/api/records/3").json()
    assert record["license"] == "CC-BY-NC-4.0" and record["rights_holder"] == "Observer 3" and record["rights"] is None
    assert record["source_record_url"] == "https://www.gbif.org/occurrence/5003"


def test_both_exports_carry_the_rights_columns(gateways: dict[str, TestClient]) -> None:
    rows = _export(gateways["licensed"], "csv")
    assert rows[0]["record_id"] == "3" and rows[0]["license"] == "CC-BY-NC-4.0"
    assert rows[0]["rights_holder"] == "Observer 3" and rows[0]["rights"] == ""
    assert all(row["license"] in ("CC0-1.0", "CC-BY-NC-4.0") for row in rows)
    hits = _export(gateways["licensed"], "json")["hits"]
    assert [(h["license"], h["rights_holder"]) for h in hits] == [(r["license"], r["rights_holder"]) for r in rows]


def test_without_rights_columns_the_export_has_them_empty(gateways: dict[str, TestClient]) -> None:
    rows = _export(gateways["plain"], "csv")
    assert {"license", "rights_holder", "rights"} <= set(rows[0]) and list(rows[0])[: len(HIT_COLUMNS)] == list(
        HIT_COLUMNS
    )
    assert all(row["license"] == row["rights_holder"] == row["rights"] == "" for row in rows)
    assert gateways["plain"].get("/api/records/3").json()["license"] is None


def test_the_measured_similarity_scale_reaches_the_info_and_an_unmeasured_one_is_null(
    gateways: dict[str, TestClient],
) -> None:
    deadline = time.monotonic() + 20
    scale = None
    while scale is None and time.monotonic() < deadline:
        scale = gateways["licensed"].get("/api/info").json()["index"]["similarity_scale"]
        time.sleep(0.05)
    assert scale is not None and scale["samples"] == 256 and scale["same_species"]["p25"] > 0.9
    assert abs(scale["other_genera"]["median"]) < 0.15
    assert gateways["plain"].get("/api/info").json()["index"]["similarity_scale"] is None


def test_the_clustered_collection_is_what_the_scale_says(gateways: dict[str, TestClient]) -> None:
    """The same rows searched directly: a record's nearest other hit is of its species, as the scale reports."""
    hits = _export(gateways["licensed"], "json")["hits"]
    assert hits[0]["record_id"] == 3
    assert hits[1]["taxonomy"]["species"] == hits[0]["taxonomy"]["species"] and hits[1]["similarity"] > 0.9
