"""Property tests of the shared decoder over the space of images and of damaged files: it gives 8-bit RGB within
the pixel limit or refuses with InvalidImage and a code, and raises nothing else."""

from __future__ import annotations

import io
import random
import warnings
from functools import cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from services.common.images import ALLOWED_FORMATS, InvalidImage, decode_image

CODES = {"empty_file", "not_an_image", "image_too_large", "corrupt_image"}
MB = 1024 * 1024

# Modes each format's encoder writes (checked against Pillow 13 and pillow-heif 1.8).
MODES = {
    "JPEG": ["RGB", "L", "CMYK"],
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "WEBP": ["RGB", "RGBA"],
    "GIF": ["P", "L", "RGB"],
    "TIFF": ["RGB", "RGBA", "L", "CMYK", "I;16", "1", "F"],
    "BMP": ["RGB", "L", "P", "1"],
    "AVIF": ["RGB", "RGBA"],
    "HEIF": ["RGB", "RGBA"],
}
# Metadata sizes around the limits that used to cost the picture: Pillow's 1 MB text chunk, a 64 KB segment.
METADATA_SIZES = [0, 300, 65_000, 1_100_000, 2_500_000]
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _decode(data: bytes, max_pixels: int, **need: int | None) -> Image.Image:
    # As in production, Pillow's warnings about odd files are warnings, not errors (pytest makes them errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_image(data, "fuzzed", max_pixels, **need)  # type: ignore[arg-type]


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str, metadata: int, kind: str, seed: int) -> bytes:
    blob = random.Random(seed).randbytes(metadata)
    save: dict[str, object] = {}
    if fmt == "PNG" and metadata:
        if kind == "icc":
            save["icc_profile"] = blob
        else:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", blob.hex()[:metadata], zip=kind == "zipped")
            save["pnginfo"] = info
    elif fmt in ("JPEG", "WEBP", "TIFF", "AVIF", "HEIF") and metadata:
        if kind == "icc" or fmt == "JPEG":
            save["icc_profile"] = blob  # JPEG splits it over APP2 segments
        elif kind == "text" and fmt == "WEBP":
            save["xmp"] = blob
        else:
            exif = Image.Exif()
            exif[0x010E] = blob.hex()[:metadata]  # an image description as long as asked
            save["exif"] = exif.tobytes()
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


@st.composite
def images(draw: st.DrawFn) -> tuple[bytes, str, int, int]:
    fmt = draw(st.sampled_from(ALLOWED_FORMATS))
    mode = draw(st.sampled_from(MODES[fmt]))
    width, height = draw(st.integers(1, 160)), draw(st.integers(1, 160))
    metadata = draw(st.sampled_from(METADATA_SIZES))
    kind = draw(st.sampled_from(["icc", "text", "zipped"]))
    image = _noise(width, height, draw(st.integers(0, 2**16))).convert(mode)
    return _encode(image, fmt, metadata, kind, draw(st.integers(0, 2**16))), fmt, width, height


@PROPERTY_SETTINGS
@given(
    picture=images(),
    max_pixels=st.integers(1, 40_000),
    shortest_side=st.none() | st.integers(1, 200),
    longest_side=st.none() | st.integers(1, 200),
)
def test_a_valid_image_decodes_to_rgb_within_the_limit_or_is_refused_as_too_large(
    picture: tuple[bytes, str, int, int], max_pixels: int, shortest_side: int | None, longest_side: int | None
) -> None:
    data, fmt, width, height = picture
    try:
        decoded = _decode(data, max_pixels, shortest_side=shortest_side, longest_side=longest_side)
    except InvalidImage as exc:
        # Metadata never costs the picture: a valid file is refused for its size alone, and only when even its
        # smallest decodable scale (1/8 for a JPEG) is over the limit.
        assert exc.code == "image_too_large", exc.message
        smallest = -(-width // 8) * -(-height // 8) if fmt == "JPEG" and min(width, height) >= 8 else width * height
        assert smallest > max_pixels or fmt == "JPEG"
        assert f"{width}x{height}" in exc.message
        return
    assert decoded.mode == "RGB"
    assert decoded.width * decoded.height <= max_pixels
    if fmt != "JPEG":
        assert decoded.size == (width, height)
    else:
        # Reduced by a scale of at most 8, and never below the size asked for when the limit allows it.
        assert decoded.width >= width // 8 and decoded.height >= height // 8
        if shortest_side is not None and decoded.width * 2 * decoded.height * 2 <= max_pixels:
            assert min(decoded.size) >= min(shortest_side, width, height) or decoded.size == (width, height)


@cache
def _valid_file(fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "a small description"
    out = io.BytesIO()
    save: dict[str, object] = {"exif": exif.tobytes()} if fmt not in ("GIF", "BMP") else {}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "AVIF", "HEIF"):
        save["icc_profile"] = bytes(range(256)) * 8
    _noise(48, 40, 5).save(out, format=fmt, **save)
    return out.getvalue()


@st.composite
def damaged_files(draw: st.DrawFn) -> bytes:
    data = bytearray(_valid_file(draw(st.sampled_from(ALLOWED_FORMATS))))
    damage = draw(st.sampled_from(["truncate", "flip bits", "overwrite", "splice"]))
    if damage == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if damage == "flip bits":
        for position in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=8)):
            data[position // 8] ^= 1 << (position % 8)
        return bytes(data)
    start = draw(st.integers(0, len(data) - 1))
    junk = draw(st.binary(min_size=1, max_size=64))
    if damage == "overwrite":
        data[start : start + len(junk)] = junk
    else:
        data[start:start] = junk
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged_files(), max_pixels=st.sampled_from([1_000, 200_000]), shortest_side=st.none() | st.just(32))
def test_damaged_files_decode_within_the_limit_or_are_refused_with_a_code(
    data: bytes, max_pixels: int, shortest_side: int | None
) -> None:
    try:
        decoded = _decode(data, max_pixels, shortest_side=shortest_side)
    except InvalidImage as exc:
        assert exc.code in CODES and exc.message.startswith("fuzzed: ")
        return
    assert decoded.mode == "RGB"
    assert decoded.width * decoded.height <= max_pixels


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_with_a_code_or_decoded_within_the_limit(data: bytes) -> None:
    try:
        decoded = _decode(data, 10_000)
    except InvalidImage as exc:
        assert exc.code in CODES
        return
    assert decoded.mode == "RGB" and decoded.width * decoded.height <= 10_000
