"""POST /api/preview: a JPEG the browser can show of any accepted upload, decoded as the search decodes it."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import ImageFactory


@pytest.fixture
def client(free_port: Callable[[], int]) -> Iterator[TestClient]:
    # No service is needed for a preview: every service URL points at a port nothing listens on.
    settings = GatewaySettings(
        embedder_url=f"http://127.0.0.1:{free_port()}",
        search_url=f"http://127.0.0.1:{free_port()}",
        fetcher_url=f"http://127.0.0.1:{free_port()}",
        max_upload_bytes=5_000_000,
        images_per_minute=20,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _preview(client: TestClient, name: str, data: bytes):  # type: ignore[no-untyped-def]
    return client.post("/api/preview", files={"image": (name, data, "application/octet-stream")})


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "TIFF", "JPEG", "PNG"])
def test_an_upload_comes_back_as_a_small_jpeg(client: TestClient, make_image: ImageFactory, fmt: str) -> None:
    response = _preview(client, f"photo.{fmt.lower()}", make_image(1200, 800, fmt=fmt))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["cache-control"] == "no-store"
    preview = Image.open(io.BytesIO(response.content))
    assert preview.format == "JPEG" and preview.size == (320, 213)


def test_the_preview_is_turned_as_the_photo_is_shown(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    Image.new("RGB", (640, 320), (0, 120, 0)).save(out, format="HEIF", exif=exif.tobytes())
    response = _preview(client, "turned.heic", out.getvalue())
    assert Image.open(io.BytesIO(response.content)).size == (160, 320)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_file"),
        (b"plain text, not a picture", 422, "not_an_image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", 422, "corrupt_image"),
    ],
)
def test_what_cannot_be_previewed_is_refused_with_the_decoders_code(
    client: TestClient, data: bytes, status: int, code: str
) -> None:
    response = _preview(client, "bad.bin", data)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and "bad.bin" in error["message"]


def test_previews_count_against_the_image_rate_limit(client: TestClient, make_image: ImageFactory) -> None:
    data = make_image(32, 32)
    answers = [_preview(client, "a.jpg", data).status_code for _ in range(21)]
    assert answers[:20] == [200] * 20 and answers[20] == 429
