"""The small JPEG kept beside a photo query, made from the spooled upload."""

from __future__ import annotations

import io
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.previews import PREVIEW_SIDE, query_preview
from tests.conftest import ImageFactory


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB"), ("PNG", "L")])
def test_a_preview_is_a_small_jpeg_keeping_the_aspect(make_image: ImageFactory, fmt: str, mode: str) -> None:
    preview = query_preview(io.BytesIO(make_image(1200, 800, fmt=fmt, mode=mode)), "photo")
    assert preview is not None
    image = Image.open(io.BytesIO(preview))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert max(image.size) == PREVIEW_SIDE and abs(image.size[0] / image.size[1] - 1.5) < 0.02


def test_the_preview_is_turned_as_the_exif_orientation_says(make_image: ImageFactory) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    preview = query_preview(io.BytesIO(make_image(600, 300, exif=exif)), "turned.jpg")
    assert preview is not None and Image.open(io.BytesIO(preview)).size == (160, 320)


@given(data=st.binary(max_size=2048))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bytes_that_are_not_an_image_give_no_preview_and_no_error(data: bytes) -> None:
    preview = query_preview(io.BytesIO(data), "x")
    assert preview is None or Image.open(io.BytesIO(preview)).format == "JPEG"


def test_the_preview_is_read_from_the_start_of_a_file_already_read(make_image: ImageFactory) -> None:
    # The embedder has streamed the spooled upload to its end before the preview is made.
    with tempfile.SpooledTemporaryFile(max_size=1024) as spooled:
        spooled.write(make_image(800, 400, fmt="PNG"))  # over max_size: rolled over to disk
        preview = query_preview(spooled, "photo.png")
    assert preview is not None and Image.open(io.BytesIO(preview)).size == (PREVIEW_SIDE, PREVIEW_SIDE // 2)
