"""Thumbnails first (the smallest published rendition that serves a size), and the caches: memory,
disk (least recently used evicted, kept across restarts), shared fetches, and browser revalidation."""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.fetcher.app import create_app
from services.fetcher.settings import FetcherSettings
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source


def _paths(source: Source) -> list[str]:
    return [path for path, _ in source.requests]


@pytest.fixture
def inat_source(source: Source, make_image: ImageFactory) -> Source:
    """A source laid out like iNaturalist: /photos/<id>/<rendition>.jpg."""
    for name, side in (("small", 240), ("medium", 500), ("large", 1024), ("original", 2048)):
        source.add(f"/photos/7/{name}.jpg", Route(body=make_image(side, side * 3 // 4, seed=7)))
    return source


@pytest.fixture
def inat_settings(tmp_path: Path) -> FetcherSettings:
    return fetcher_settings(tmp_path / "cache", domain_policies={"127.0.0.1": {"renditions": "inaturalist"}})


@pytest.mark.parametrize(
    ("size", "named", "fetched", "side"),
    [
        ("thumb", "original", "medium", 256),  # small (240) is too small for 256
        ("medium", "original", "large", 768),
        ("full", "original", "original", 2048),
        ("thumb", "large", "medium", 256),
        ("full", "medium", "medium", 500),  # never larger than the rendition named
    ],
)
def test_the_smallest_rendition_that_serves_the_size_is_fetched(
    inat_source: Source, inat_settings: FetcherSettings, size: str, named: str, fetched: str, side: int
) -> None:
    with TestClient(create_app(inat_settings)) as client:
        response = client.get("/v1/image", params={"url": f"{inat_source.base_url}/photos/7/{named}.jpg", "size": size})
    assert response.status_code == 200
    assert _paths(inat_source) == [f"/photos/7/{fetched}.jpg"]
    assert max(Image.open(io.BytesIO(response.content)).size) == side


def test_a_missing_rendition_falls_back_to_the_url_as_named(
    inat_source: Source, inat_settings: FetcherSettings
) -> None:
    del inat_source.routes["/photos/7/medium.jpg"]
    with TestClient(create_app(inat_settings)) as client:
        response = client.get("/v1/image", params={"url": f"{inat_source.base_url}/photos/7/original.jpg"})
    assert response.status_code == 200
    assert _paths(inat_source) == ["/photos/7/medium.jpg", "/photos/7/original.jpg"]


def test_renditions_are_only_guessed_for_domains_that_publish_them(inat_source: Source, tmp_path: Path) -> None:
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as client:
        client.get("/v1/image", params={"url": f"{inat_source.base_url}/photos/7/original.jpg"})
    assert _paths(inat_source) == ["/photos/7/original.jpg"]


def test_jpeg_output_when_configured(source: Source, make_image: ImageFactory, tmp_path: Path) -> None:
    url = source.add("/a.png", Route(body=make_image(300, 200, fmt="PNG"), content_type="image/png"))
    with TestClient(create_app(fetcher_settings(tmp_path / "cache", thumb_format="JPEG"))) as client:
        response = client.get("/v1/image", params={"url": url})
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"


# -- caches ----------------------------------------------------------------------------------------


def test_a_cached_image_is_served_after_a_restart_without_asking_the_source(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    url = source.add("/kept.jpg", Route(body=make_image(640, 480)))
    settings = fetcher_settings(tmp_path / "cache")
    with TestClient(create_app(settings)) as client:
        first = client.get("/v1/image", params={"url": url})
        again = client.get("/v1/image", params={"url": url})
    with TestClient(create_app(settings)) as client:
        after_restart = client.get("/v1/image", params={"url": url})
        stats = client.get("/v1/stats").json()["cache"]
    assert first.headers["x-fetcher-cache"] == "miss" and again.headers["x-fetcher-cache"] == "memory"
    assert after_restart.status_code == 200 and after_restart.headers["x-fetcher-cache"] == "disk"
    assert after_restart.content == first.content and after_restart.headers["etag"] == first.headers["etag"]
    assert len(source.requests) == 1
    assert stats["entries"] == 1 and stats["disk_hits"] == 1 and stats["hit_rate"] == 1.0


def test_the_disk_cache_evicts_the_least_recently_used_to_stay_under_its_cap(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    urls = {name: source.add(f"/{name}.jpg", Route(body=make_image(256, 256, seed=i))) for i, name in enumerate("abcd")}

    def get(client: TestClient, name: str) -> str:
        response = client.get("/v1/image", params={"url": urls[name]})
        assert response.status_code == 200
        return response.headers["x-fetcher-cache"]

    settings = fetcher_settings(tmp_path / "cache", memory_cache_bytes=0)
    with TestClient(create_app(settings)) as client:
        one = len(client.get("/v1/image", params={"url": urls["a"]}).content)
    # Room for three of these thumbnails, not four.
    settings = fetcher_settings(tmp_path / "cache2", memory_cache_bytes=0, cache_max_bytes=int(one * 3.5))
    with TestClient(create_app(settings)) as client:
        assert [get(client, n) for n in "abc"] == ["miss"] * 3
        assert get(client, "a") == "disk"  # a is now the most recently used; b the least
        assert get(client, "d") == "miss"  # evicts b
        stats = client.get("/v1/stats").json()["cache"]
    with TestClient(create_app(settings)) as client:  # the order survives a restart too
        assert [get(client, n) for n in "acd"] == ["disk"] * 3
        assert get(client, "b") == "miss"
    assert stats["entries"] == 3 and stats["bytes"] <= settings.cache_max_bytes and stats["evictions"] == 1


def test_concurrent_requests_for_one_image_share_one_fetch(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    url = source.add("/popular.jpg", Route(body=make_image(800, 600), delay=1.0))
    outcomes: list[tuple[int, str]] = []
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as client:

        def fetch(size: str) -> None:
            response = client.get("/v1/image", params={"url": url, "size": size})
            outcomes.append((response.status_code, response.headers.get("x-fetcher-cache", "")))

        threads = [threading.Thread(target=fetch, args=(size,)) for size in ["thumb"] * 4 + ["full"] * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = client.get("/v1/stats").json()["cache"]
    assert [status for status, _ in outcomes] == [200] * 6
    assert len(source.requests) == 1  # thumb and full share the download too
    assert sorted(how for _, how in outcomes).count("shared") == 4  # one leader per size, the rest joined
    assert stats["shared"] == 4


@pytest.mark.parametrize(
    "header",
    ["{etag}", "W/{etag}", '"stale", {etag}', "*"],
    ids=["exact", "weak", "list", "star"],
)
def test_a_browser_holding_the_image_gets_304(
    source: Source, make_image: ImageFactory, tmp_path: Path, header: str
) -> None:
    url = source.add("/a.jpg", Route(body=make_image()))
    with TestClient(create_app(fetcher_settings(tmp_path / "cache", browser_cache_seconds=600))) as client:
        first = client.get("/v1/image", params={"url": url})
        etag = first.headers["etag"]
        again = client.get("/v1/image", params={"url": url}, headers={"If-None-Match": header.format(etag=etag)})
        changed = client.get("/v1/image", params={"url": url}, headers={"If-None-Match": '"something-else"'})
    assert first.headers["cache-control"] == "public, max-age=600"
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert changed.status_code == 200 and changed.content == first.content


def _disk_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("??/*") if p.is_file()]


def test_the_disk_cache_holds_rendered_images_only(source: Source, make_image: ImageFactory, tmp_path: Path) -> None:
    url = source.add("/big.jpg", Route(body=make_image(2000, 1500)))
    cache = tmp_path / "cache"
    with TestClient(create_app(fetcher_settings(cache))) as client:
        client.get("/v1/image", params={"url": url, "size": "thumb"})
    files = _disk_files(cache)
    assert len(files) == 1 and files[0].suffix == ".webp"
    with Image.open(files[0]) as image:
        assert max(image.size) == 256


# -- a disk cache that cannot be read is a miss -----------------------------------------------------------


def _disk_only(tmp_path: Path) -> FetcherSettings:
    return fetcher_settings(tmp_path / "cache", memory_cache_bytes=0)  # every view reaches the disk cache


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "services.fetcher.cache" and r.levelname == "WARNING"]


def test_a_cache_folder_replaced_by_a_file_is_a_miss_logged_once(
    source: Source, make_image: ImageFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = source.add("/a.jpg", Route(body=make_image()))
    settings = _disk_only(tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/image", params={"url": url}).status_code == 200
        assert client.get("/v1/image", params={"url": url}).headers["x-fetcher-cache"] == "disk"
        shutil.rmtree(settings.cache_dir)
        settings.cache_dir.write_text("not a folder")
        answers = [client.get("/v1/image", params={"url": url}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.headers["x-fetcher-cache"] for a in answers} == {"miss"}
    Image.open(io.BytesIO(answers[-1].content)).verify()
    assert len(source.requests) == 5  # the first view, then each view the cache could not answer
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 2, warnings  # one per cause: reading and writing under a file, each once
    assert all("not a directory" in w.lower() for w in warnings), warnings


def test_a_service_started_with_its_cache_folder_a_file_serves_images(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    url = source.add("/a.jpg", Route(body=make_image()))
    settings = _disk_only(tmp_path)
    settings.cache_dir.write_text("not a folder")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/image", params={"url": url}).status_code == 200
        assert client.get("/v1/image", params={"url": url}).status_code == 200


def test_a_truncated_cache_entry_is_a_miss_and_is_replaced(
    source: Source, make_image: ImageFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = source.add("/a.jpg", Route(body=make_image(300, 200)))
    settings = _disk_only(tmp_path)
    with TestClient(create_app(settings)) as client:
        whole = client.get("/v1/image", params={"url": url}).content
        [entry] = settings.cache_dir.glob("??/*.webp")
        entry.write_bytes(entry.read_bytes()[: len(whole) // 2])  # what a damaged disk might leave
        again = client.get("/v1/image", params={"url": url})
        third = client.get("/v1/image", params={"url": url})
    assert again.status_code == 200 and again.headers["x-fetcher-cache"] == "miss"
    assert again.content == whole
    assert third.headers["x-fetcher-cache"] == "disk" and third.content == whole  # written afresh
    assert len(source.requests) == 2
    assert any("truncated" in w for w in _cache_warnings(caplog))


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_cache_entry_without_read_permission_is_a_miss(
    source: Source, make_image: ImageFactory, tmp_path: Path
) -> None:
    url = source.add("/a.jpg", Route(body=make_image()))
    settings = _disk_only(tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/image", params={"url": url}).status_code == 200
        [entry] = settings.cache_dir.glob("??/*.webp")
        entry.chmod(0)
        response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 200 and response.headers["x-fetcher-cache"] == "miss"


@pytest.mark.parametrize(("size", "side"), [("thumb", 256), ("full", 2000)])
def test_a_jpeg_over_the_pixel_limit_is_served_decoded_at_reduced_scale(
    source: Source, make_image: ImageFactory, tmp_path: Path, size: str, side: int
) -> None:
    url = source.add("/big.jpg", Route(body=make_image(4000, 3000, quality=70)))
    with TestClient(create_app(fetcher_settings(tmp_path / "cache", max_image_pixels=3_000_000))) as client:
        response = client.get("/v1/image", params={"url": url, "size": size})
    assert response.status_code == 200, response.text
    # full: 12 megapixels stored, decoded at 1/2 scale (2000x1500), the first within the 3 megapixel limit.
    assert max(Image.open(io.BytesIO(response.content)).size) == side


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_avif_and_heic_sources_are_rendered(source: Source, make_image: ImageFactory, tmp_path: Path, fmt: str) -> None:
    url = source.add(
        f"/photo.{fmt.lower()}", Route(body=make_image(600, 400, fmt=fmt), content_type=f"image/{fmt.lower()}")
    )
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as client:
        response = client.get("/v1/image", params={"url": url, "size": "thumb"})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (256, 171)
