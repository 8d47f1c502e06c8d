"""Scopes that fill, taxon filters, minimum similarity, diversity caps and the stated bounds, on known neighbours.

Each behaviour is checked through both lookup paths (the per-id sidecar and DuckDB rows), which must agree, and
on both backends (FAISS, which the engine over-fetches and screens; Milvus, which filters during the search).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.search.app import create_app
from tests.search.conftest import Collection, MilvusLite, rows_for, unit_vectors, write_collection


@pytest.fixture(params=["sidecar", "duckdb"])
def lookup(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_client(collection: Collection, lookup: str, on: Any) -> Iterator[TestClient]:
    settings = on(collection, use_sidecar=lookup == "sidecar")
    with TestClient(create_app(settings)) as test_client:
        assert test_client.get("/v1/stats").json()["lookup"] == lookup
        yield test_client


def _exact(collection: Collection, query: int, keep: Any) -> list[int]:
    """The ids a perfect search would return, nearest first, among rows `keep` accepts."""
    order = np.argsort(-(collection.vectors @ collection.vectors[query]))
    return [int(i) for i in order if keep(int(i), collection.rows[int(i)])]


def _search(client: TestClient, collection: Collection, query: int, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json={"vectors": [collection.vectors[query].tolist()], **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_scope_search_fills_top_n_when_the_scope_is_five_percent_of_rows(
    any_client: TestClient, collection: Collection, backend: str
) -> None:
    body = _search(any_client, collection, 3, top_n=8, scope="url_only")
    result = body["results"][0]
    assert [hit["record"]["id"] for hit in result["hits"]] == _exact(collection, 3, lambda i, r: i % 20 == 0)[:8]
    assert result["exhausted"] is False and result["search"]["stopped"] == "filled"
    if backend == "faiss":
        # 4 x 8 = 32 neighbours hold about one match: it had to widen, and says so.
        assert result["search"]["rounds"] > 1 and result["candidates"] > 32
    else:
        # Milvus filtered during the search: the 8 it returned were the 8 nearest in the scope.
        assert result["search"]["rounds"] == 1 and result["candidates"] == 8
    assert set(body["timings"]) == {"index_ms", "screen_ms", "fetch_ms"}


def test_order_filter_keeps_only_that_order_in_rank_order(any_client: TestClient, collection: Collection) -> None:
    body = _search(any_client, collection, 0, top_n=6, filters=[{"rank": "order", "value": "Lepidoptera"}])
    hits = body["results"][0]["hits"]
    assert [hit["record"]["id"] for hit in hits] == _exact(collection, 0, lambda i, r: r["order"] == "Lepidoptera")[:6]
    assert all(hit["record"]["order"] == "Lepidoptera" for hit in hits)


def test_several_filters_all_apply_and_ignore_case_and_spaces(any_client: TestClient, collection: Collection) -> None:
    filters = [{"rank": "order", "value": "lepidoptera"}, {"rank": "family", "value": "  FAMILY3 "}]
    hits = _search(any_client, collection, 10, top_n=5, filters=filters)["results"][0]["hits"]
    expected = _exact(collection, 10, lambda i, r: r["order"] == "Lepidoptera" and r["family"] == "Family3")
    assert [hit["record"]["id"] for hit in hits] == expected[:5]


def test_filters_combine_with_a_scope(any_client: TestClient, collection: Collection) -> None:
    filters = [{"rank": "order", "value": "Coleoptera"}]
    hits = _search(any_client, collection, 7, top_n=4, scope="url_only", filters=filters)["results"][0]["hits"]
    expected = _exact(collection, 7, lambda i, r: i % 20 == 0 and r["order"] == "Coleoptera")
    assert [hit["record"]["id"] for hit in hits] == expected[:4]


@pytest.mark.parametrize(
    ("rank", "value", "expected"),
    [("species", "Genus9 EPITHET20", [20]), ("species", "epithet21", [21]), ("common_name", "Common 42", [42])],
)
def test_species_and_common_name_filters_find_their_record(
    any_client: TestClient, collection: Collection, rank: str, value: str, expected: list[int]
) -> None:
    result = _search(any_client, collection, 0, top_n=3, filters=[{"rank": rank, "value": value}])["results"][0]
    assert [hit["record"]["id"] for hit in result["hits"]] == expected
    assert result["exhausted"] is True and result["search"]["stopped"] == "exhausted"


def test_a_filter_nothing_matches_gives_no_hits_and_says_why(any_client: TestClient, collection: Collection) -> None:
    result = _search(any_client, collection, 0, top_n=3, filters=[{"rank": "kingdom", "value": "Plantae"}])
    assert result["results"][0]["hits"] == []
    assert result["results"][0]["exhausted"] is True and result["results"][0]["search"]["stopped"] == "exhausted"


def test_min_similarity_cuts_hits_and_says_so(any_client: TestClient, collection: Collection) -> None:
    sims = np.sort(collection.vectors @ collection.vectors[5])[::-1]
    threshold = float(sims[4] - 1e-4)  # five records at or above it
    result = _search(any_client, collection, 5, top_n=10, min_similarity=threshold)["results"][0]
    assert len(result["hits"]) == 5
    assert all(hit["similarity"] >= threshold for hit in result["hits"])
    assert result["exhausted"] is True and result["search"]["stopped"] == "min_similarity"


def test_max_candidates_is_the_stated_bound(collection: Collection) -> None:
    # FAISS only: Milvus returns in-scope neighbours alone, so 8 of them are 8 candidates, far below the bound.
    with TestClient(create_app(collection.settings(max_candidates=50))) as client:
        result = _search(client, collection, 3, top_n=8, scope="url_only")["results"][0]
        assert client.get("/v1/stats").json()["max_candidates"] == 50
    expected = [i for i in _exact(collection, 3, lambda i, r: True)[:50] if i % 20 == 0]
    assert [hit["record"]["id"] for hit in result["hits"]] == expected and len(expected) < 8
    assert result["exhausted"] is True and result["search"]["stopped"] == "max_candidates"
    assert result["candidates"] == 50


def test_each_query_vector_is_filled_on_its_own(any_client: TestClient, collection: Collection) -> None:
    picks = [3, 77, 150]
    body = {"vectors": collection.vectors[picks].tolist(), "top_n": 4, "scope": "url_only"}
    results = any_client.post("/v1/search", json=body).json()["results"]
    for pick, result in zip(picks, results, strict=True):
        assert [hit["record"]["id"] for hit in result["hits"]] == _exact(collection, pick, lambda i, r: i % 20 == 0)[:4]


def _diverse_rows(count: int) -> list[dict[str, Any]]:
    """Four species in turn; every source record (source_id) has three images in a row."""
    rows = rows_for(count)
    for i, row in enumerate(rows):
        row["genus"], row["species"], row["source_id"] = "Danaus", f"sp{i % 4}", str(i // 3)
    return rows


@pytest.fixture
def diverse(tmp_path: Path) -> Collection:
    return write_collection(tmp_path / "diverse", unit_vectors(120, 16, seed=9), _diverse_rows(120))


@pytest.mark.parametrize("use_sidecar", [True, False], ids=["sidecar", "duckdb"])
def test_max_per_species_caps_hits_of_one_species(diverse: Collection, use_sidecar: bool, on: Any) -> None:
    with TestClient(create_app(on(diverse, use_sidecar=use_sidecar))) as client:
        result = _search(client, diverse, 0, top_n=8, max_per_species=2)["results"][0]
    ids = [hit["record"]["id"] for hit in result["hits"]]
    expected: list[int] = []
    counts: dict[int, int] = {}
    for i in _exact(diverse, 0, lambda i, r: True):
        if counts.get(i % 4, 0) < 2:
            counts[i % 4] = counts.get(i % 4, 0) + 1
            expected.append(i)
    assert ids == expected  # two of each of the four species, nearest first
    assert result["exhausted"] is False


@pytest.mark.parametrize("use_sidecar", [True, False], ids=["sidecar", "duckdb"])
def test_max_per_source_caps_hits_of_one_source_record(diverse: Collection, use_sidecar: bool, on: Any) -> None:
    with TestClient(create_app(on(diverse, use_sidecar=use_sidecar))) as client:
        result = _search(client, diverse, 0, top_n=10, max_per_source=1)["results"][0]
    sources = [hit["record"]["source_id"] for hit in result["hits"]]
    assert len(sources) == 10 and len(set(sources)) == 10
    expected: list[int] = []
    seen: set[int] = set()
    for i in _exact(diverse, 0, lambda i, r: True):
        if i // 3 not in seen:
            seen.add(i // 3)
            expected.append(i)
    assert [hit["record"]["id"] for hit in result["hits"]] == expected[:10]


@pytest.fixture(scope="module")
def ivf(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    folder = tmp_path_factory.mktemp("ivf")
    return write_collection(folder, unit_vectors(2000, 16, seed=3), rows_for(2000), factory="IVF32,Flat")


def test_ivf_scope_search_visits_more_lists_until_filled(ivf: Collection) -> None:
    with TestClient(create_app(ivf.settings())) as client:
        body = _search(client, ivf, 42, top_n=10, nprobe=1, scope="url_only")
    result = body["results"][0]
    # One list holds about 60 vectors, three of them with a URL: filling 10 needs more lists.
    assert len(result["hits"]) == 10 and all(hit["record"]["has_url"] for hit in result["hits"])
    assert body["nprobe"] == 1 and result["search"]["nprobe"] > 1 and result["search"]["rounds"] > 1
    assert result["search"]["stopped"] == "filled"


def test_milvus_ivf_scope_search_visits_more_lists_until_filled(ivf: Collection, milvus: MilvusLite) -> None:
    settings = ivf.settings(**milvus.settings(ivf, "IVF_FLAT", nlist=32))
    with TestClient(create_app(settings)) as client:
        body = _search(client, ivf, 42, top_n=10, nprobe=1, scope="url_only")
    result = body["results"][0]
    # Milvus filters inside the one list it visits (about three records with a URL): the same loop widens it.
    assert len(result["hits"]) == 10 and all(hit["record"]["has_url"] for hit in result["hits"])
    assert result["search"]["nprobe"] > 1 and result["search"]["rounds"] > 1
    assert result["search"]["stopped"] == "filled"


def test_milvus_ivf_search_stops_at_max_nprobe_and_says_so(ivf: Collection, milvus: MilvusLite) -> None:
    settings = ivf.settings(**milvus.settings(ivf, "IVF_FLAT", nlist=32), max_nprobe=2)
    with TestClient(create_app(settings)) as client:
        result = _search(client, ivf, 42, top_n=10, nprobe=1, scope="url_only")["results"][0]
    assert len(result["hits"]) < 10
    assert result["exhausted"] is True and result["search"]["stopped"] == "max_nprobe"
    assert result["search"]["nprobe"] == 2


def test_ivf_search_stops_at_max_nprobe_and_says_so(ivf: Collection) -> None:
    with TestClient(create_app(ivf.settings(max_nprobe=2))) as client:
        result = _search(client, ivf, 42, top_n=10, nprobe=1, scope="url_only")["results"][0]
    assert len(result["hits"]) < 10
    assert result["exhausted"] is True and result["search"]["stopped"] == "max_nprobe"
    assert result["search"]["nprobe"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filters": [{"rank": "tribe", "value": "Danaini"}]}, "filters.0.rank"),
        ({"filters": [{"rank": "genus", "value": "   "}]}, "filters.0.value"),
        ({"filters": [{"rank": "genus"}]}, "filters.0.value"),
        ({"filters": [{"rank": "genus", "value": "x" * 201}]}, "filters.0.value"),
        ({"filters": [{"rank": "genus", "value": "Apis"}] * 9}, "filters"),
        ({"filters": {"rank": "genus", "value": "Apis"}}, "filters"),
        ({"min_similarity": 1.5}, "min_similarity"),
        ({"max_per_source": 0}, "max_per_source"),
        ({"max_per_species": 201}, "max_per_species"),
        ({"ef_search": 0}, "ef_search"),
    ],
)
def test_bad_filters_and_options_get_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/v1/search", json={"vectors": [[0.1] * 16], **body})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert any(detail["field"].startswith(field) for detail in error["details"]), error


@pytest.fixture(scope="module")
def accented(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """Names stored decomposed (NFD) on even rows, composed (NFC) on odd rows, as real sources mix them."""
    rows = rows_for(40)
    for i, row in enumerate(rows):
        form = "NFD" if i % 2 == 0 else "NFC"
        row["common_name"] = unicodedata.normalize(form, "Mariposa Monarca Común" if i % 4 < 2 else "Pequeña Ártica")
        row["genus"] = unicodedata.normalize(form, "Ñandúa")
    return write_collection(tmp_path_factory.mktemp("accented"), unit_vectors(40, 16, seed=5), rows)


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_a_name_typed_in_either_unicode_form_finds_names_stored_in_both(
    accented: Collection, lookup: str, form: str, on: Any
) -> None:
    with TestClient(create_app(on(accented, use_sidecar=lookup == "sidecar"))) as client:
        typed = unicodedata.normalize(form, " MARIPOSA  monarca común\u200b")
        body = _search(client, accented, 0, top_n=40, filters=[{"rank": "common_name", "value": typed}])
        ids = {hit["record"]["id"] for hit in body["results"][0]["hits"]}
        assert ids == {i for i in range(40) if i % 4 < 2}  # both stored forms, nothing else
        species = unicodedata.normalize(form, "ñandúa epithet3")
        body = _search(client, accented, 0, top_n=40, filters=[{"rank": "species", "value": species}])
        assert [hit["record"]["id"] for hit in body["results"][0]["hits"]] == [3]
