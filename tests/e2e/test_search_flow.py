"""A photo uploaded to the gateway travels through the real processes and comes back as its own record."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.stack import Stack

pytestmark = pytest.mark.e2e


def _published(stack: Stack) -> int:
    return next(i for i, row in enumerate(stack.rows) if row["url"])


def _unpublished(stack: Stack) -> int:
    return next(i for i, row in enumerate(stack.rows) if not row["url"])


def test_uploaded_photo_comes_back_as_hit_one_with_taxonomy_and_a_thumbnail(stack: Stack) -> None:
    record_id = _published(stack)
    row = stack.rows[record_id]
    photo = (stack.images / row["path"]).read_bytes()
    response = httpx.post(
        stack.gateway.url + "/api/search",
        files={"image": ("query.jpg", photo, "image/jpeg")},
        data={"top_n": "5", "scope": "all"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "image" and len(body["hits"]) == 5
    first = body["hits"][0]
    assert first["record_id"] == record_id and first["rank"] == 1
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)
    taxonomy = first["taxonomy"]
    assert (taxonomy["genus"], taxonomy["species"], taxonomy["common_name"]) == (
        row["genus"], row["species"], row["common_name"]
    )  # fmt: skip
    assert taxonomy["scientific_name"] == f"{row['genus']} {row['species']}"
    assert first["image_url"] == row["url"]
    assert first["thumbnail_url"] == f"/api/images/{record_id}?size=thumb"
    thumbnail = httpx.get(stack.gateway.url + first["thumbnail_url"], timeout=30)
    assert thumbnail.status_code == 200, thumbnail.text
    image = Image.open(io.BytesIO(thumbnail.content))
    image.load()
    assert max(image.size) <= 256


def test_text_search_finds_hits_through_the_text_tower(stack: Stack) -> None:
    response = httpx.post(stack.gateway.url + "/api/search", json={"text": "Danaus plexippus", "top_n": 4}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "text" and body["text"] == "Danaus plexippus"
    assert [hit["rank"] for hit in body["hits"]] == [1, 2, 3, 4]


def test_scope_keeps_only_records_with_a_url(stack: Stack) -> None:
    photo = (stack.images / stack.rows[_unpublished(stack)]["path"]).read_bytes()
    response = httpx.post(
        stack.gateway.url + "/api/search",
        files={"image": ("q.jpg", photo, "image/jpeg")},
        data={"top_n": "10", "scope": "url_only"},
        timeout=60,
    )
    hits = response.json()["hits"]
    assert len(hits) == 10 and all(hit["image_url"] for hit in hits)
    assert _unpublished(stack) not in [hit["record_id"] for hit in hits]


def test_record_endpoint_gives_the_full_metadata(stack: Stack) -> None:
    record_id = _published(stack)
    record = httpx.get(f"{stack.gateway.url}/api/records/{record_id}", timeout=30).json()
    row = stack.rows[record_id]
    assert record["record_id"] == record_id
    assert record["taxonomy"]["family"] == row["family"]
    assert record["publisher"] == row["publisher"] and record["source_id"] == row["source_id"]
    missing = httpx.get(f"{stack.gateway.url}/api/records/999999", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_record"


def test_a_record_without_a_published_image_has_no_thumbnail(stack: Stack) -> None:
    record_id = _unpublished(stack)
    response = httpx.get(f"{stack.gateway.url}/api/images/{record_id}", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_image"


def test_not_an_image_is_refused_with_the_embedders_reason(stack: Stack) -> None:
    response = httpx.post(
        stack.gateway.url + "/api/search", files={"image": ("notes.txt", b"hello", "text/plain")}, timeout=30
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "not_an_image"


def test_health_and_info_report_every_service(stack: Stack) -> None:
    health = httpx.get(stack.gateway.url + "/api/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = httpx.get(stack.gateway.url + "/api/info", timeout=30).json()
    assert info["model"]["model"] == "tiny-test-clip" and info["index"]["vectors"] == len(stack.rows)


def test_request_id_is_echoed_and_metrics_label_routes_by_template(stack: Stack) -> None:
    answer = httpx.get(f"{stack.gateway.url}/api/records/1", headers={"X-Request-ID": "trace-me-42"}, timeout=30)
    assert answer.headers["x-request-id"] == "trace-me-42"
    metrics = httpx.get(stack.gateway.url + "/metrics", timeout=30).text
    assert 'route="/api/records/{record_id}"' in metrics


def test_a_stopped_fetcher_leaves_search_working_and_images_unavailable(stack: Stack) -> None:
    stack.fetcher.stop()
    record_id = _published(stack)
    photo = (stack.images / stack.rows[record_id]["path"]).read_bytes()
    search = httpx.post(stack.gateway.url + "/api/search", files={"image": ("q.jpg", photo, "image/jpeg")}, timeout=60)
    assert search.status_code == 200 and search.json()["hits"][0]["record_id"] == record_id
    image = httpx.get(f"{stack.gateway.url}/api/images/{record_id}", timeout=30)
    assert image.status_code == 503 and image.json()["error"]["code"] == "fetcher_unavailable"
    health = httpx.get(stack.gateway.url + "/api/health", timeout=30).json()
    assert health["status"] == "degraded" and health["services"]["fetcher"]["ready"] is False


def test_a_stopped_embedder_gives_503_naming_it(stack: Stack) -> None:
    stack.embedder.stop()
    response = httpx.post(stack.gateway.url + "/api/search", json={"text": "Apis"}, timeout=30)
    assert response.status_code == 503
    assert "embedder" in response.json()["error"]["message"]
