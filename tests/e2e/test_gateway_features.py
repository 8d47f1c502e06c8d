"""The gateway's search features against the real services as processes: query reuse, several
photos, search from a record, prediction and consensus, tree, export and permalinks."""

from __future__ import annotations

import csv
import io
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.common.vocabulary import SearchParameters
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def _embeds(stack: Stack) -> float:
    """How many image embeddings the embedder has answered, from its own /metrics."""
    metrics = httpx.get(stack.embedder.url + "/metrics", timeout=10).text
    pattern = r'http_requests_total\{method="POST",route="/v1/embed/image",service="embedder",status="200"\} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def _photo(stack: Stack, index: int) -> bytes:
    return (stack.images / stack.rows[index]["path"]).read_bytes()


def _upload(stack: Stack, *indexes: int, **fields: str) -> httpx.Response:
    files = [("image", (f"{i}.jpg", _photo(stack, i), "image/jpeg")) for i in indexes]
    return httpx.post(stack.gateway.url + "/api/search", files=files, data=fields, timeout=60)


def test_changing_parameters_reuses_the_query_without_embedding_again(stack: Stack) -> None:
    first = _upload(stack, 7, top_n="5")
    assert first.status_code == 200, first.text
    query_id = first.json()["query_id"]
    before = _embeds(stack)
    for params in ({"top_n": 3}, {"top_n": 8, "scope": "url_only"}, {"rank": "family"}):
        again = httpx.post(stack.gateway.url + "/api/search", json={"query_id": query_id, **params}, timeout=60)
        assert again.status_code == 200, again.text
        assert again.json()["query_id"] == query_id
    same_photo = _upload(stack, 7, top_n="4")
    assert same_photo.json()["query_id"] == query_id
    assert _embeds(stack) == before
    default = SearchParameters().top_n  # the one default result count, when a request names none
    assert len(again.json()["hits"]) == default and again.json()["parameters"]["rank"] == "family"


def test_several_photos_of_one_organism_are_one_query(stack: Stack) -> None:
    response = _upload(stack, 0, 12, top_n="5")  # two pictures of the same species
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "image" and body["label"] == "0.jpg, 12.jpg"
    ids = [hit["record_id"] for hit in body["hits"]]
    assert 0 in ids and 12 in ids


def test_search_from_a_record_finds_that_record_first(stack: Stack) -> None:
    response = httpx.post(stack.gateway.url + "/api/search", json={"record_id": 5, "top_n": 3}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "record" and body["hits"][0]["record_id"] == 5
    missing = httpx.post(stack.gateway.url + "/api/search", json={"record_id": 99999}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_record"


def test_result_has_consensus_tree_and_identity(stack: Stack) -> None:
    body = _upload(stack, 3, top_n="6", rank="genus").json()
    row = stack.rows[3]
    assert body["consensus"]["rank"] == "genus" and 0 < body["consensus"]["share"] <= 1
    assert sum(node["count"] for node in body["tree"]) == 6
    assert body["tree"][0]["rank"] == "kingdom"
    assert body["identity"]["model"] == "tiny-test-clip"
    assert body["identity"]["index"].startswith("IndexFlatIP:")
    assert row["genus"] in [hit["taxonomy"]["genus"] for hit in body["hits"]]


def test_taxon_filter_keeps_only_that_taxon(stack: Stack) -> None:
    files = [("image", ("q.jpg", _photo(stack, 3), "image/jpeg"))]
    response = httpx.post(
        stack.gateway.url + "/api/search",
        files=files,
        data={"top_n": "3", "filter": "order:Lepidoptera"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits and all(hit["taxonomy"]["order"] == "Lepidoptera" for hit in hits)


def test_zero_shot_prediction_rides_with_the_search_and_is_compared_with_the_hits(stack: Stack) -> None:
    body = httpx.post(stack.gateway.url + "/api/search", json={"text": "monarch", "top_n": 5}, timeout=60).json()
    assert body["prediction_error"] is None
    predictions = body["prediction"]["predictions"]
    species = {f"{row['genus']} {row['species']}" for row in stack.rows}
    assert predictions and all(p["name"] in species and p["rank"] == "species" for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert body["agreement"] == (predictions[0]["name"] == body["consensus"]["name"])
    family = httpx.post(
        stack.gateway.url + "/api/search", json={"query_id": body["query_id"], "rank": "family"}, timeout=60
    ).json()
    families = {row["family"] for row in stack.rows}
    assert all(p["name"] in families for p in family["prediction"]["predictions"])


def test_permalink_reproduces_the_search_and_exports_csv(stack: Stack) -> None:
    body = httpx.post(
        stack.gateway.url + "/api/search", json={"text": "Apis mellifera", "top_n": 4, "scope": "url_only"}, timeout=60
    ).json()
    link = urlsplit(body["permalink"])
    params = parse_qs(link.query)
    assert link.path == "/" and params["text"] == ["Apis mellifera"] and params["scope"] == ["url_only"]
    assert params["model"] == ["tiny-test-clip"]
    replay = httpx.get(stack.gateway.url + "/api/search?" + link.query, timeout=60)
    assert replay.status_code == 200, replay.text
    assert [h["record_id"] for h in replay.json()["hits"]] == [h["record_id"] for h in body["hits"]]
    exported = httpx.get(stack.gateway.url + "/api/search?" + link.query + "&format=csv&download=true", timeout=60)
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["record_id"]) for r in rows] == [h["record_id"] for h in body["hits"]]
    assert all(r["image_url"].startswith("http://127.0.0.1") for r in rows)
