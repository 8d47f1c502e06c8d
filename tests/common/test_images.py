"""Decoding uploads into RGB: allowlisted formats, orientation, unusual modes, metadata, large photos, refusals."""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, features

from services.common.images import ALLOWED_FORMATS, InvalidImage, allowed_format_names, decode_image

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


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
        "texture.tga: not an image in a supported format (JPEG, PNG, WebP, GIF, TIFF, BMP, AVIF, HEIC)"
    )


def test_the_allowlist_covers_what_the_installed_decoders_read() -> None:
    assert features.check("avif") and "AVIF" in ALLOWED_FORMATS, "Pillow 13 decodes AVIF itself"
    assert "HEIF" in ALLOWED_FORMATS, "pillow-heif is pinned in requirements/base.txt"


def test_docs_list_the_accepted_formats_as_the_code_does() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    listed = re.search(r"Accepted formats: ([^.]*)\.", api)
    assert listed is not None, "docs/api.md says `Accepted formats: ...`"
    assert listed.group(1) == allowed_format_names()


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


def _png_with(image: Image.Image, chunk: str, size: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    text = os.urandom(size // 2).hex()  # incompressible, so a zipped chunk stays as large as asked
    if chunk == "iTXt":
        info.add_itxt("XML:com.adobe.xmp", text, zip=True)
    elif chunk == "zTXt":
        info.add_text("Comment", text, zip=True)
    elif chunk == "tEXt":
        info.add_text("Comment", text)
    if chunk == "iCCP":
        return _encode(image, "PNG", icc_profile=os.urandom(size))
    return _encode(image, "PNG", pnginfo=info)


@pytest.mark.parametrize("chunk", ["iTXt", "zTXt", "tEXt", "iCCP"])
def test_png_metadata_chunks_of_megabytes_do_not_cost_the_picture(chunk: str) -> None:
    image = Image.new("RGB", (40, 30), (20, 160, 40))
    data = _png_with(image, chunk, 3 * MB)
    assert len(data) > 1.5 * MB  # zipped hex text: half its 3 MB, and past Pillow's 1 MB limit once inflated
    decoded = decode_image(data, f"{chunk}.png", 10**8)
    assert decoded.size == (40, 30) and decoded.getpixel((5, 5)) == (20, 160, 40)


def test_png_metadata_after_the_pixels_is_left_out_too() -> None:
    data = _encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG")
    end = data.rindex(b"IEND") - 4
    payload = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + __import__("zlib").compress(os.urandom(2 * MB))
    chunk = struct.pack(">I", len(payload)) + b"iTXt" + payload + b"\x00\x00\x00\x00"  # CRC unchecked: dropped
    decoded = decode_image(data[:end] + chunk + data[end:], "late-xmp.png", 10**8)
    assert decoded.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF", "AVIF", "HEIF"])
def test_large_icc_profiles_and_exif_do_not_cost_the_picture(fmt: str) -> None:
    image = Image.new("RGB", (48, 32), (200, 40, 40))
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # an image description as large as an EXIF block can be
    data = _encode(image, fmt, icc_profile=os.urandom(2 * MB), exif=exif.tobytes(), quality=90)
    decoded = decode_image(data, f"profiled.{fmt.lower()}", 10**8)
    red, green, _ = decoded.getpixel((10, 10))
    assert decoded.size == (48, 32) and red > 170 and green < 70


def test_avif_is_decoded() -> None:
    decoded = decode_image(_encode(Image.new("RGB", (40, 24), (30, 30, 220)), "AVIF", quality=90), "a.avif", 10**8)
    _, _, blue = decoded.getpixel((20, 12))
    assert decoded.size == (40, 24) and blue > 180


@pytest.fixture(scope="module")
def phone_photo() -> bytes:
    """A 108-megapixel JPEG (12000x9000) under 3 MB, as phones with 108 MP sensors write."""
    image = Image.linear_gradient("L").resize((12000, 9000)).convert("RGB")
    data = _encode(image, "JPEG", quality=75)
    assert len(data) < 3 * MB
    return data


def test_a_108_megapixel_jpeg_is_decoded_at_the_scale_the_caller_needs(phone_photo: bytes) -> None:
    decoded = decode_image(phone_photo, "phone.jpg", 89_478_485, shortest_side=224)
    assert decoded.size == (1500, 1125)  # 1/8 scale: the largest that keeps the shortest side at 224 or more


def test_a_108_megapixel_jpeg_at_full_size_is_decoded_within_the_pixel_limit(phone_photo: bytes) -> None:
    decoded = decode_image(phone_photo, "phone.jpg", 89_478_485)
    assert decoded.size == (6000, 4500)  # 1/2 scale: the first within 89,478,485 pixels


def test_a_jpeg_is_reduced_no_further_than_the_longest_side_asked() -> None:
    data = _encode(Image.new("RGB", (2000, 500), (9, 9, 9)), "JPEG")
    assert decode_image(data, "wide.jpg", 10**8, longest_side=256).size == (500, 125)  # 1/8 would give 250
    assert decode_image(data, "wide.jpg", 10**8, longest_side=600).size == (1000, 250)
    assert decode_image(data, "wide.jpg", 10**8, shortest_side=200).size == (1000, 250)


def test_a_reduced_jpeg_keeps_its_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(Image.new("RGB", (1600, 800), (0, 90, 0)), "JPEG", exif=exif)
    assert decode_image(data, "turned.jpg", 10**8, shortest_side=100).size == (100, 200)


def test_a_jpeg_over_the_limit_even_at_one_eighth_is_refused_with_its_true_size() -> None:
    data = _encode(Image.new("RGB", (800, 800)), "JPEG")
    with pytest.raises(InvalidImage) as refused:
        decode_image(data, "huge.jpg", 5_000)
    assert refused.value.code == "image_too_large"
    assert refused.value.message == (
        "huge.jpg: 800x800 is 640,000 pixels (still 10,000 at 1/8 scale), more than the limit of 5,000"
    )


def _heic_declaring(width: int, height: int) -> bytes:
    """A real HEIC whose image spatial extents (`ispe`) property is rewritten to declare width x height."""
    data = bytearray(_encode(Image.new("RGB", (64, 64), (10, 200, 30)), "HEIF"))
    at = data.index(b"ispe")
    data[at + 8 : at + 16] = struct.pack(">II", width, height)
    return bytes(data)


@pytest.mark.parametrize("keep", ["all", "header only"])
def test_a_heic_declaring_800_megapixels_is_too_large(keep: str) -> None:
    data = _heic_declaring(32_000, 25_000)
    if keep == "header only":
        data = data[: data.index(b"mdat") - 4]
    with pytest.raises(InvalidImage) as refused:
        decode_image(data, "huge.heic", 89_478_485)
    assert refused.value.code == "image_too_large"
    assert refused.value.message == "huge.heic: 32000x25000 is 800,000,000 pixels, more than the limit of 89,478,485"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF", "HEIF"])
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_a_truncated_file_of_a_supported_format_is_corrupt(fmt: str, cut: float) -> None:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8))
    data = _encode(image, fmt)
    with pytest.raises(InvalidImage) as refused:
        decode_image(data[: max(16, int(len(data) * cut))], f"cut.{fmt.lower()}", 10**8)
    assert refused.value.code == "corrupt_image"
    assert "truncated or corrupt" in refused.value.message


@pytest.mark.parametrize("data", [b"plain text, not a picture", b"%PDF-1.7\n", b"\x00" * 64, b"<svg></svg>"])
def test_bytes_of_no_supported_format_are_not_an_image(data: bytes) -> None:
    with pytest.raises(InvalidImage) as refused:
        decode_image(data, "notes.txt", 10**8)
    assert refused.value.code == "not_an_image"


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def test_malformed_jpeg_metadata_segments_do_not_cost_the_picture() -> None:
    data = _encode(Image.new("RGB", (32, 24), (240, 200, 10)), "JPEG", quality=95)
    junk = (
        _segment(0xE0, b"JFIF\x00\x01")  # a JFIF header cut short
        + _segment(0xE2, b"MPF\x00" + b"\xff" * 40)  # a multi-picture index that points nowhere
        + _segment(0xE2, b"ICC_PROFILE\x00\x07\x03" + os.urandom(500))  # ICC chunk 7 of 3
        + _segment(0xED, b"Photoshop 3.0\x00" + os.urandom(300))
        + _segment(0xFE, b"a comment")
    )
    decoded = decode_image(data[:2] + junk + data[2:], "odd-segments.jpg", 10**8)
    red, green, blue = decoded.getpixel((16, 12))
    assert decoded.size == (32, 24) and red > 220 and green > 180 and blue < 50


def test_a_multi_picture_jpeg_gives_its_first_picture() -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    out = io.BytesIO()
    frames[0].save(out, format="MPO", save_all=True, append_images=frames[1:])
    decoded = decode_image(out.getvalue(), "stereo.jpg", 10**8)
    red, _, blue = decoded.getpixel((20, 15))
    assert decoded.size == (40, 30) and red > 200 and blue < 50
