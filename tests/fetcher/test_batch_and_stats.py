"""POST /v1/images answers each URL with its own status; /v1/stats shows traffic, cache and errors."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from services.fetcher.app import create_app
from services.fetcher.safety import StaticResolver
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source


def test_a_batch_answers_every_url_with_its_own_status(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    good = source.add("/good.jpg", Route(body=make_image(600, 400)))
    urls = {
        "ok": good,
        "not_found": source.base_url + "/missing.jpg",
        "not_an_image": source.add("/page", Route(body=b"<html></html>", content_type="text/html")),
        "too_large": source.add("/huge.jpg", Route(body=b"\xff\xd8\xff" + bytes(3_000_000))),
        # Under another name, so that its back-off does not hold up the others (same server).
        "rate_limited": source.add("/busy.jpg", Route(status=429, headers={"Retry-After": "5"})).replace(
            "127.0.0.1", "busy.example.test"
        ),
        "blocked": "http://photos.example.test/a.jpg",
        "bad_url": "ftp://example.org/a.jpg",
        "error": source.add("/broken.jpg", Route(status=500, body=b"oops", content_type="text/plain")),
        "timeout": source.add("/slow.jpg", Route(body=make_image(), delay=1.5)),
    }
    settings = fetcher_settings(tmp_path / "cache", read_timeout=0.5, retries=0)
    resolver = StaticResolver({"photos.example.test": ["10.0.0.5"], "busy.example.test": ["127.0.0.1"]})
    with TestClient(create_app(settings, resolver=resolver)) as client:
        response = client.post("/v1/images", json={"urls": [*urls.values(), good], "size": "thumb"})
    assert response.status_code == 200
    body = response.json()
    statuses = [item["status"] for item in body["results"]]
    assert statuses == [*urls.keys(), "ok"]
    first = body["results"][0]
    assert first["media_type"] == "image/webp" and first["etag"].startswith('"') and first["bytes"] > 0
    assert first["data"] is None and first["message"] is None
    assert body["results"][-1]["cache"] in ("shared", "memory")  # the same URL twice: one fetch
    assert next(i for i in body["results"] if i["status"] == "rate_limited")["retry_after"] == 5
    assert all(item["message"] for item in body["results"] if item["status"] != "ok")
    assert body["counts"]["ok"] == 2 and body["counts"]["blocked"] == 1
    assert [path for path, _ in source.requests].count("/good.jpg") == 1


def test_a_batch_can_carry_the_images(source: Source, make_image: ImageFactory, tmp_path: Path) -> None:
    urls = [source.add(f"/{i}.jpg", Route(body=make_image(500, 500, seed=i))) for i in range(3)]
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as client:
        body = client.post("/v1/images", json={"urls": urls, "size": "medium", "include_data": True}).json()
        # What the batch fetched is what GET then serves, from the cache.
        served = client.get("/v1/image", params={"url": urls[0], "size": "medium"})
    images = [Image.open(io.BytesIO(base64.b64decode(item["data"]))) for item in body["results"]]
    assert [image.size for image in images] == [(500, 500)] * 3  # medium (768) does not enlarge
    assert served.headers["x-fetcher-cache"] == "memory"
    assert base64.b64decode(body["results"][0]["data"]) == served.content


def test_a_batch_is_validated(tmp_path: Path) -> None:
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as client:
        empty = client.post("/v1/images", json={"urls": []})
        too_many = client.post("/v1/images", json={"urls": ["http://127.0.0.1/a.jpg"] * 65})
        bad_size = client.post("/v1/images", json={"urls": ["http://127.0.0.1/a.jpg"], "size": "huge"})
    for response in (empty, too_many, bad_size):
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_stats_show_traffic_in_flight_cache_figures_and_recent_errors(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    good = source.add("/ok.jpg", Route(body=make_image()))
    slow = source.add("/slow.jpg", Route(body=make_image(), delay=1.5))
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as client:
        client.get("/v1/image", params={"url": good})
        client.get("/v1/image", params={"url": good})
        client.get("/v1/image", params={"url": source.base_url + "/missing.jpg"})
        background = threading.Thread(target=client.get, args=("/v1/image",), kwargs={"params": {"url": slow}})
        background.start()
        during = client.get("/v1/stats").json()
        for _ in range(50):  # until the slow request is under way
            if during["in_flight"]:
                break
            time.sleep(0.02)
            during = client.get("/v1/stats").json()
        background.join()
        after = client.get("/v1/stats").json()
    domain = during["domains"][0]
    assert domain["domain"] == "127.0.0.1" and domain["policy"] == "*"
    assert domain["in_flight"] == 1 and during["in_flight"] == 1
    assert after["domains"][0]["in_flight"] == 0
    assert after["domains"][0]["requests"] == 3 and after["domains"][0]["errors"] == 1
    cache = after["cache"]
    assert cache["hits"] == 1 and cache["misses"] == 3 and cache["hit_rate"] == 0.25
    assert cache["memory_entries"] == 2 and cache["entries"] == 2
    [error] = after["recent_errors"]
    assert error["code"] == "not_found" and error["url"].endswith("/missing.jpg") and error["domain"] == "127.0.0.1"
    assert after["fetches"] == 3 and after["failures"] == 1
