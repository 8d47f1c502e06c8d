"""Every kind of upload the embedder takes or refuses, through the real app, each with a message for people."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from services.common.images import ALLOWED_FORMATS
from services.embedder.app import create_app
from services.embedder.settings import EmbedderSettings
from tests.conftest import ImageFactory


def _picture(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((width, height))


def _encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def _embed(client: TestClient, *files: tuple[str, bytes]):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/embed/image", files=[("images", (name, data, "application/octet-stream")) for name, data in files]
    )


def _vector(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["vectors"][0], dtype=np.float32)


@pytest.mark.parametrize(
    ("fmt", "save"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("GIF", {}), ("TIFF", {}), ("BMP", {})],
)
def test_each_supported_format_is_embedded(client: TestClient, fmt: str, save: dict[str, object]) -> None:
    vector = _vector(_embed(client, (f"photo.{fmt.lower()}", _encode(_picture(), fmt, **save))))
    assert vector.shape == (32,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_heic_photo_is_embedded_like_the_same_picture_as_png(client: TestClient) -> None:
    assert "HEIF" in ALLOWED_FORMATS, "pillow-heif (requirements/embedder.txt) is not installed"
    picture = _picture(128, 96, seed=3)
    heic = _vector(_embed(client, ("iphone.heic", _encode(picture, "HEIF", quality=95))))
    png = _vector(_embed(client, ("same.png", _encode(picture, "PNG"))))
    # Lossy HEIC against lossless PNG of one picture: the same picture to the model, not the same bytes.
    assert float(heic @ png) > 0.98


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("PCX", "old.pcx"),
        ("TGA", "tex.tga"),
        ("PPM", "raw.ppm"),
        ("ICO", "fav.ico"),
        ("SGI", "pic.rgb"),
        ("DDS", "tex.dds"),
    ],
)
def test_formats_outside_the_allowlist_are_refused_naming_the_supported_ones(
    client: TestClient, fmt: str, name: str
) -> None:
    response = _embed(client, (name, _encode(_picture(32, 32), fmt)))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "not_an_image"
    assert name in error["message"] and "JPEG, PNG, WebP, GIF, TIFF, BMP" in error["message"]


def test_exif_orientation_is_applied_before_embedding(client: TestClient) -> None:
    upright = _picture(64, 96, seed=4)
    # Stored lying on its side with "rotate 90 clockwise to display" (orientation 6), as cameras do.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _vector(_embed(client, ("camera.png", _encode(stored, "PNG", exif=exif))))
    reference = _vector(_embed(client, ("upright.png", _encode(upright, "PNG"))))
    unrotated = _vector(_embed(client, ("stored.png", _encode(stored, "PNG"))))
    np.testing.assert_allclose(rotated, reference, atol=1e-5)
    assert not np.allclose(rotated, unrotated, atol=1e-3)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("CMYK", "TIFF"), ("L", "PNG"), ("I;16", "PNG")]
)
def test_unusual_colour_modes_are_embedded_as_rgb(client: TestClient, mode: str, fmt: str) -> None:
    image = _picture(48, 48, seed=5).convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    assert image.mode == mode
    vector = _vector(_embed(client, (f"{mode}.{fmt.lower()}", _encode(image, fmt))))
    assert np.isfinite(vector).all()


def test_opaque_rgba_gives_the_same_vector_as_rgb(client: TestClient) -> None:
    picture = _picture(seed=6)
    rgba = _vector(_embed(client, ("a.png", _encode(picture.convert("RGBA"), "PNG"))))
    rgb = _vector(_embed(client, ("b.png", _encode(picture, "PNG"))))
    np.testing.assert_allclose(rgba, rgb, atol=1e-6)


def test_animated_gif_is_embedded_from_its_first_frame(client: TestClient) -> None:
    first, second = _picture(seed=7), _picture(seed=8)
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=[second])
    animated = _vector(_embed(client, ("anim.gif", out.getvalue())))
    still = _vector(_embed(client, ("first.gif", _encode(first, "GIF"))))
    np.testing.assert_allclose(animated, still, atol=1e-6)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries (almost) none: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding(client: TestClient) -> None:
    bomb = _png_header_only(30_000, 30_000)  # 900 million pixels in a few dozen bytes
    assert len(bomb) < 200
    response = _embed(client, ("bomb.png", bomb))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "image_too_large"
    assert error["message"] == "bomb.png: 30000x30000 is 900,000,000 pixels, more than the limit of 89,478,485"


def test_truncated_file_is_refused_as_corrupt_with_its_name(client: TestClient) -> None:
    data = _encode(_picture(200, 150, seed=9), "PNG")
    response = _embed(client, ("half.png", data[: len(data) // 2]))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "corrupt_image"
    assert "half.png" in error["message"] and "truncated or corrupt" in error["message"]


def test_corrupt_bytes_after_a_valid_header_are_refused_as_corrupt(client: TestClient) -> None:
    data = bytearray(_encode(_picture(64, 64, seed=10), "PNG"))
    data[60:] = bytes(len(data) - 60)  # keep the signature and header, zero the compressed pixels
    response = _embed(client, ("broken.png", bytes(data)))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "corrupt_image"


def test_one_bad_image_among_several_fails_the_request_naming_it(client: TestClient, make_image: ImageFactory) -> None:
    response = _embed(client, ("good.jpg", make_image(seed=1)), ("second.txt", b"plain text, not a picture"))
    assert response.status_code == 422
    assert "second.txt" in response.json()["error"]["message"]


def test_oversized_body_is_refused_while_it_streams_in(embedder_settings: EmbedderSettings) -> None:
    """The 413 goes out once the limit is passed: the rest of the upload is never read, nor buffered."""
    app = create_app(embedder_settings.model_copy(update={"max_request_bytes": 100_000}))
    chunk, chunks = b"x" * 10_000, 1_000  # 10 MB offered, no Content-Length (chunked)
    pulled = 0
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/embed/image", "raw_path": b"/v1/embed/image", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8001),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(message for message in sent if message["type"] == "http.response.start")
    assert start["status"] == 413
    assert pulled <= 11  # 100 kB of 10 kB chunks, and the one that crossed the line
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert b"too_large" in body and b"0.1 MB" in body


def test_a_108_megapixel_phone_photo_is_embedded(client: TestClient) -> None:
    # 12000x9000 under 3 MB: decoded at 1/8 scale (1500x1125), which still covers the model's input.
    photo = _encode(Image.linear_gradient("L").resize((12000, 9000)).convert("RGB"), "JPEG", quality=75)
    assert len(photo) < 3 * 1024 * 1024
    vector = _vector(_embed(client, ("phone.jpg", photo)))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_a_png_with_megabytes_of_xmp_is_embedded_like_the_same_picture_without(client: TestClient) -> None:
    picture = _picture(96, 64, seed=11)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", np.random.default_rng(1).bytes(1_500_000).hex(), zip=True)
    with_xmp = _vector(_embed(client, ("edited.png", _encode(picture, "PNG", pnginfo=info))))
    plain = _vector(_embed(client, ("plain.png", _encode(picture, "PNG"))))
    assert float(with_xmp @ plain) > 0.9999


def test_avif_photo_is_embedded(client: TestClient) -> None:
    assert "AVIF" in ALLOWED_FORMATS
    picture = _picture(128, 96, seed=4)
    avif = _vector(_embed(client, ("photo.avif", _encode(picture, "AVIF", quality=95))))
    png = _vector(_embed(client, ("same.png", _encode(picture, "PNG"))))
    assert float(avif @ png) > 0.98
