"""Decoding uploads into RGB: allowlisted formats, orientation and unusual modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.common.images import ALLOWED_FORMATS, InvalidImage, decode_image


def _encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(_encode(image, "JPEG", exif=exif), "rotated", 10**8)
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16"])
def test_unusual_modes_become_rgb(mode: str) -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    decoded = decode_image(_encode(image, fmt), mode, 10**8)
    assert decoded.mode == "RGB" and decoded.size == (16, 16)


def test_transparent_pixels_go_onto_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    decoded = decode_image(_encode(image, "PNG"), "clear", 10**8)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_keeps_its_brightness() -> None:
    pixels = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = decode_image(_encode(Image.fromarray(pixels), "PNG"), "grey16", 10**8)
    assert 120 <= decoded.getpixel((0, 0))[0] <= 135


def test_gif_first_frame_is_used() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(out.getvalue(), "anim", 10**8)
    red, _, blue = decoded.getpixel((0, 0))
    assert red > 200 and blue < 50


def test_formats_outside_the_allowlist_are_refused() -> None:
    data = _encode(Image.new("RGB", (8, 8)), "PCX")
    with pytest.raises(InvalidImage) as refused:
        decode_image(data, "old.pcx", 10**8)
    assert refused.value.code == "not_an_image"


def test_heic_is_decoded_when_the_plugin_is_installed() -> None:
    assert "HEIF" in ALLOWED_FORMATS, "pillow-heif is pinned in requirements/embedder.txt"
    image = Image.new("RGB", (32, 16), (200, 30, 30))
    decoded = decode_image(_encode(image, "HEIF", quality=95), "iphone.heic", 10**8)
    red, green, blue = decoded.getpixel((8, 8))
    assert decoded.size == (32, 16) and red > 170 and green < 60 and blue < 60


def test_heic_orientation_is_applied_once() -> None:
    image = Image.new("RGB", (40, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(_encode(image, "HEIF", exif=exif.tobytes()), "rotated.heic", 10**8)
    assert decoded.size == (20, 40)


def test_unsupported_format_message_names_the_supported_ones() -> None:
    with pytest.raises(InvalidImage) as refused:
        decode_image(_encode(Image.new("RGB", (8, 8)), "TGA"), "texture.tga", 10**8)
    assert refused.value.message == (
        "texture.tga: not an image in a supported format (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC)"
    )


def test_pixel_limit_is_checked_before_the_pixels_are_decoded() -> None:
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(InvalidImage) as refused:
        decode_image(data, "big.png", 300 * 200 - 1)
    assert refused.value.code == "image_too_large"
    assert refused.value.message == "big.png: 300x200 is 60,000 pixels, more than the limit of 59,999"


def test_a_broken_exif_block_does_not_lose_the_photo() -> None:
    image = Image.new("RGB", (24, 12), (10, 20, 200))
    # An orientation value outside 1..8 and a truncated EXIF blob: decoders in the wild write both.
    exif = Image.Exif()
    exif[0x0112] = 42
    with pytest.warns(UserWarning, match="Corrupt EXIF"):  # Pillow says so, and carries on
        decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes()[:-2]), "odd-exif.jpg", 10**8)
    assert decoded.size == (24, 12) and decoded.mode == "RGB"
