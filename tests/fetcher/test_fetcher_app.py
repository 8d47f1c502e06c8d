"""The fetcher against local HTTP sources: sizes, re-encoding, and each way a source can fail."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.fetcher.app import create_app
from services.fetcher.settings import FetcherSettings
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source


@pytest.fixture
def settings(tmp_path: Path) -> FetcherSettings:
    return fetcher_settings(tmp_path / "cache")


@pytest.fixture
def client(settings: FetcherSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _decoded(response) -> Image.Image:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_thumbnail_is_reencoded_small_with_caching_headers(
    client: TestClient, source: Source, make_image: ImageFactory
) -> None:
    url = source.add("/photos/1/original.jpg", Route(body=make_image(800, 600)))
    response = client.get("/v1/image", params={"url": url, "size": "thumb"})
    image = _decoded(response)
    assert image.format == "WEBP" and max(image.size) == 256 and image.size == (256, 192)
    assert response.headers["content-type"] == "image/webp"
    assert "max-age" in response.headers["cache-control"] and response.headers["etag"]
    again = client.get(
        "/v1/image", params={"url": url, "size": "thumb"}, headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304


def test_sizes_medium_and_full(client: TestClient, source: Source, make_image: ImageFactory) -> None:
    url = source.add("/big.jpg", Route(body=make_image(1000, 500)))
    assert max(_decoded(client.get("/v1/image", params={"url": url, "size": "medium"})).size) == 768
    assert _decoded(client.get("/v1/image", params={"url": url, "size": "full"})).size == (1000, 500)


def test_requests_carry_an_identifying_user_agent(client: TestClient, source: Source, make_image: ImageFactory) -> None:
    url = source.add("/a.jpg", Route(body=make_image()))
    client.get("/v1/image", params={"url": url})
    agent = source.requests[-1][1]["User-Agent"]
    assert "bioclip-image-search" in agent and "+http" in agent


def test_metadata_is_stripped(client: TestClient, source: Source) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    out = io.BytesIO()
    Image.new("RGB", (50, 50), (9, 9, 9)).save(out, format="JPEG", exif=exif)
    url = source.add("/exif.jpg", Route(body=out.getvalue()))
    image = _decoded(client.get("/v1/image", params={"url": url, "size": "full"}))
    assert b"SecretCam" not in image.info.get("exif", b"")


@pytest.mark.parametrize(
    ("route", "status", "code"),
    [
        (Route(status=404, body=b"gone", content_type="text/plain"), 404, "not_found"),
        (Route(body=b"<html><body>hello</body></html>", content_type="text/html"), 502, "not_an_image"),
        (Route(status=500, body=b"oops", content_type="text/plain"), 502, "error"),
        (
            Route(status=429, body=b"slow down", content_type="text/plain", headers={"Retry-After": "7"}),
            429,
            "rate_limited",
        ),
        (Route(body=b"x" * 2_500_000), 502, "too_large"),
    ],
    ids=["404", "html", "500", "429", "too-large"],
)
def test_source_failures_get_a_status_word(
    client: TestClient, source: Source, route: Route, status: int, code: str
) -> None:
    url = source.add("/thing", route)
    response = client.get("/v1/image", params={"url": url})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if code == "rate_limited":
        assert response.headers["retry-after"] == "7"


def test_a_source_that_trickles_is_cut_off_at_the_total_deadline(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    settings = fetcher_settings(tmp_path / "cache", total_timeout=1.0, read_timeout=5.0)
    url = source.add("/slow.jpg", Route(body=make_image(400, 400, fmt="PNG"), trickle=0.2))
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/a.jpg", "http://:80/nohost.jpg", "http://?x"])
def test_only_http_urls_with_a_host_are_fetched(client: TestClient, url: str) -> None:
    response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_url"


def test_bad_parameters_get_422(client: TestClient) -> None:
    assert client.get("/v1/image").status_code == 422
    response = client.get("/v1/image", params={"url": "http://127.0.0.1/a.jpg", "size": "huge"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_stats_count_requests_and_bytes_per_domain(
    client: TestClient, source: Source, make_image: ImageFactory
) -> None:
    good = source.add("/ok.jpg", Route(body=make_image()))
    client.get("/v1/image", params={"url": good})
    client.get("/v1/image", params={"url": source.base_url + "/missing.jpg"})
    stats = client.get("/v1/stats").json()
    domain = next(d for d in stats["domains"] if d["domain"] == "127.0.0.1")
    assert domain["requests"] == 2 and domain["errors"] == 1 and domain["bytes"] >= len(make_image())
    assert stats["fetches"] == 2 and stats["failures"] == 1
