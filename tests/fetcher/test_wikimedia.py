"""Wikimedia Commons: the fetcher asks upload.wikimedia.org for the standard-width thumbnail that
serves the size, not the original, and an original over the size cap still yields an image through a
thumbnail. A local server stands in for Commons (the name is answered with 127.0.0.1 by the resolver)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.fetcher.app import create_app
from services.fetcher.safety import StaticResolver
from services.fetcher.thumbnails import WIKIMEDIA_WIDTHS, renditions_within_cap, smaller_rendition
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source

ORIGINAL = "/wikipedia/commons/a/ab/Danaus_plexippus.jpg"


def _thumb(width: int, name: str = "Danaus_plexippus.jpg") -> str:
    return f"/wikipedia/commons/thumb/a/ab/{name}/{width}px-{name}"


def _noise_jpeg(width: int, height: int) -> bytes:
    """Noise compresses badly: a big file for its size, as an original photo is."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.fixture
def commons(source: Source, make_image: ImageFactory) -> Source:
    source.add(ORIGINAL, Route(body=_noise_jpeg(1000, 750)))
    for width in WIKIMEDIA_WIDTHS:
        source.add(_thumb(width), Route(body=make_image(width, width * 3 // 4, seed=width)))
    return source


def _client(tmp_path: Path, **overrides: object) -> TestClient:
    resolver = StaticResolver({"upload.wikimedia.org": ["127.0.0.1"]})
    return TestClient(create_app(fetcher_settings(tmp_path / "cache", **overrides), resolver=resolver))


def _url(source: Source, path: str) -> str:
    port = source.base_url.rsplit(":", 1)[1]
    return f"http://upload.wikimedia.org:{port}{path}"


def _paths(source: Source) -> list[str]:
    return [path for path, _ in source.requests]


@pytest.mark.parametrize(("longest_side", "width"), [(20, 20), (21, 40), (256, 330), (768, 960), (3840, 3840)])
def test_the_nearest_standard_width_at_or_above_the_size_is_chosen(longest_side: int, width: int) -> None:
    url = "https://upload.wikimedia.org" + ORIGINAL
    assert smaller_rendition(url, "wikimedia", longest_side) == "https://upload.wikimedia.org" + _thumb(width)


def test_no_thumbnail_beyond_the_largest_width_the_full_image_or_a_smaller_named_thumbnail() -> None:
    original = "https://upload.wikimedia.org" + ORIGINAL
    assert smaller_rendition(original, "wikimedia", 4000) is None
    assert smaller_rendition(original, "wikimedia", None) is None
    named = "https://upload.wikimedia.org" + _thumb(250)
    assert smaller_rendition(named, "wikimedia", 256) is None  # never larger than the one named
    assert smaller_rendition("https://upload.wikimedia.org/wikipedia/commons/a/ab", "wikimedia", 256) is None


def test_an_svg_original_is_asked_for_as_a_png_thumbnail() -> None:
    url = "https://upload.wikimedia.org/wikipedia/commons/4/4a/Leaf.svg"
    assert smaller_rendition(url, "wikimedia", 256) == (
        "https://upload.wikimedia.org/wikipedia/commons/thumb/4/4a/Leaf.svg/330px-Leaf.svg.png"
    )
    assert renditions_within_cap(url, "wikimedia")[0].endswith("/3840px-Leaf.svg.png")


@pytest.mark.parametrize(("size", "width", "side"), [("thumb", 330, 256), ("medium", 960, 768)])
def test_commons_serves_a_thumbnail_and_the_original_is_not_downloaded(
    tmp_path: Path, commons: Source, size: str, width: int, side: int
) -> None:
    with _client(tmp_path) as client:
        response = client.get("/v1/image", params={"url": _url(commons, ORIGINAL), "size": size})
    assert response.status_code == 200
    assert _paths(commons) == [_thumb(width)]
    assert max(Image.open(io.BytesIO(response.content)).size) == side


def test_an_original_over_the_size_cap_still_yields_an_image_through_a_thumbnail(
    tmp_path: Path, commons: Source
) -> None:
    original, largest_thumbnail = len(commons.routes[ORIGINAL].body), len(commons.routes[_thumb(3840)].body)
    assert largest_thumbnail < original
    with _client(tmp_path, max_image_bytes=largest_thumbnail) as client:
        response = client.get("/v1/image", params={"url": _url(commons, ORIGINAL), "size": "full"})
    assert response.status_code == 200
    # The original is refused by its declared length (not read), then the largest thumbnail is fetched.
    assert _paths(commons) == [ORIGINAL, _thumb(3840)]
    assert Image.open(io.BytesIO(response.content)).size == (3840, 2880)


def test_a_missing_thumbnail_falls_back_to_the_original(tmp_path: Path, commons: Source) -> None:
    del commons.routes[_thumb(330)]
    with _client(tmp_path) as client:
        response = client.get("/v1/image", params={"url": _url(commons, ORIGINAL)})
    assert response.status_code == 200
    assert _paths(commons) == [_thumb(330), ORIGINAL]
