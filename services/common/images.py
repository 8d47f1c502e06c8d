"""Decode image bytes safely into 8-bit RGB: a format allowlist, a pixel limit on what is decoded, large JPEGs
decoded at reduced scale, metadata that never costs the picture, EXIF orientation."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError, features

from services.common.containers import declared_size, without_metadata
from services.common.errors import DomainError, InvalidInput, InvalidValue

logger = logging.getLogger(__name__)

# The pixel limit is ours (`max_pixels`, applied to the pixels actually decoded). Pillow's process-wide
# decompression-bomb check runs inside Image.open on the stored size, before a JPEG can be told to decode at
# 1/8 scale, so it would refuse a 108-megapixel phone photo that decodes to 1.7 megapixels.
Image.MAX_IMAGE_PIXELS = None

# Pillow's rarer decoders carry most of its security bugs: open only these.
BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")


def _avif_formats() -> tuple[str, ...]:
    """AVIF through Pillow's own plugin (Pillow 11.2 and later, when built with libavif)."""
    return ("AVIF",) if features.check("avif") else ()


def _heif_formats() -> tuple[str, ...]:
    """HEIC/HEIF (iPhone photos) through pillow-heif, the maintained Pillow plugin, when it is installed."""
    try:
        import pillow_heif
    except ImportError:
        return ()
    # pillow-heif applies the container's rotation itself and resets the EXIF orientation to match,
    # so exif_transpose below does not turn the picture twice.
    pillow_heif.register_heif_opener()
    return ("HEIF",)


ALLOWED_FORMATS: tuple[str, ...] = BASE_FORMATS + _avif_formats() + _heif_formats()

# How each allowed format is named to people (Pillow calls HEIC "HEIF").
FORMAT_NAMES = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "TIFF": "TIFF",
    "BMP": "BMP",
    "AVIF": "AVIF",
    "HEIF": "HEIC",
}

# Formats in the HEIF container, whose header declares the image size (ISO/IEC 23008-12).
_HEIF_CONTAINERS = ("HEIF", "AVIF")

# The fractions of its stored size at which libjpeg decodes a JPEG straight from its DCT coefficients
# (Pillow's Image.draft picks among them): memory and time fall with the square of the scale.
JPEG_SCALES = (1, 2, 4, 8)


def allowed_format_names() -> str:
    return ", ".join(FORMAT_NAMES.get(fmt, fmt) for fmt in ALLOWED_FORMATS)


class InvalidImage(ValueError):
    """Bytes that cannot be a query or a thumbnail. `code`: empty_file, not_an_image,
    image_too_large or corrupt_image."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_domain_error(self) -> DomainError:
        """What the refusal is to a caller who sent the bytes: an empty upload is a malformed request
        (`InvalidInput`); bytes that are not a usable image are an unusable value (`InvalidValue`)."""
        kind = InvalidInput if self.code == "empty_file" else InvalidValue
        return kind(self.message, code=self.code)


def decode_image(
    data: bytes,
    name: str,
    max_pixels: int,
    *,
    shortest_side: int | None = None,
    longest_side: int | None = None,
) -> Image.Image:
    """Decode (the first frame of an animation), apply EXIF orientation, and convert to 8-bit RGB.

    `name` names the file in messages. `max_pixels` bounds the pixels decoded (and so the memory: 3 to 8
    bytes a pixel). `shortest_side` / `longest_side` (pixels) say the smallest the caller will use: a JPEG
    larger than that is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still gives it; with neither,
    at full size. A JPEG over `max_pixels` is decoded at the first scale within it; any other format over it
    is refused, its size read from the header before a pixel is decoded. Metadata (PNG text and ICC chunks,
    JPEG application segments other than EXIF and Adobe) is left out before decoding, so none can cost the
    picture; a broken EXIF block is ignored.

    Raises InvalidImage: `empty_file`; `not_an_image` (not one of ALLOWED_FORMATS); `image_too_large` (over
    `max_pixels`, the message giving the stored size); `corrupt_image` (truncated or broken).
    """
    if not data:
        raise InvalidImage("empty_file", f"{name}: the file is empty")
    claimed = claimed_format(data)
    try:
        # Opening reads the header only: no pixel is decoded before _reduce has checked the size.
        image = Image.open(io.BytesIO(without_metadata(data)), formats=ALLOWED_FORMATS)
    except Exception as exc:
        if claimed is None:
            raise InvalidImage(
                "not_an_image", f"{name}: not an image in a supported format ({allowed_format_names()})"
            ) from exc
        _log_unexpected(name, exc)
        declared = declared_size(data) if claimed in _HEIF_CONTAINERS else None
        if declared is not None:
            # libheif and libavif refuse some headers outright (their own security limits, missing image
            # data): the size the file declares still says whether it was too large before anything else.
            _check_pixels(name, *declared, max_pixels)
        kind = FORMAT_NAMES[claimed]
        raise InvalidImage(
            "corrupt_image", f"{name}: the {kind} file is truncated or corrupt (its header cannot be read)"
        ) from exc
    try:
        _reduce(image, name, max_pixels, shortest_side, longest_side)
        image.load()
    except InvalidImage:
        raise
    except Exception as exc:
        _log_unexpected(name, exc)
        raise InvalidImage("corrupt_image", f"{name}: the image is truncated or corrupt ({exc})") from exc
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:
        # A broken EXIF block should not cost the user their photo: use it as stored.
        logger.info("%s: EXIF orientation ignored (%s: %s)", name, type(exc).__name__, exc)
    try:
        return to_rgb(image)
    except Exception as exc:
        _log_unexpected(name, exc)
        raise InvalidImage("corrupt_image", f"{name}: the image's colours cannot be read ({exc})") from exc


def claimed_format(data: bytes) -> str | None:
    """The allowed format whose signature `data` starts with (Pillow's own test for it), None when none."""
    Image.init()  # loads the plugins once; Image.open does the same
    prefix = data[:16]
    for fmt in ALLOWED_FORMATS:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a plugin's test that trips on a short prefix does not claim it
            continue
    return None


def _reduce(
    image: Image.Image, name: str, max_pixels: int, shortest_side: int | None, longest_side: int | None
) -> None:
    """Set a JPEG to decode at reduced scale; refuse anything whose decoded size would pass `max_pixels`."""
    width, height = image.size
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        _check_pixels(name, width, height, max_pixels)
        return
    scales = [scale for scale in JPEG_SCALES if scale <= min(width, height)]
    within = [scale for scale in scales if _pixels(width, height, scale) <= max_pixels]
    if not within:
        _check_pixels(name, width, height, max_pixels, reduced=_pixels(width, height, scales[-1]))
    scale = within[0]
    for candidate in scales:
        reduced = (math.ceil(width / candidate), math.ceil(height / candidate))
        if (shortest_side is None and longest_side is None) or (
            (shortest_side is not None and min(reduced) < shortest_side)
            or (longest_side is not None and max(reduced) < longest_side)
        ):
            break
        scale = max(scale, candidate)
    if scale > 1:
        # Asking for the size divided by the scale makes Pillow pick exactly that scale.
        image.draft(image.mode, (width // scale, height // scale))
        logger.debug("%s: %dx%d decoded at 1/%d scale, %dx%d", name, width, height, scale, *image.size)
    _check_pixels(name, *image.size, max_pixels)


def _pixels(width: int, height: int, scale: int) -> int:
    return math.ceil(width / scale) * math.ceil(height / scale)


def _check_pixels(name: str, width: int, height: int, max_pixels: int, reduced: int | None = None) -> None:
    if reduced is None and width * height <= max_pixels:
        return
    at_scale = f" (still {reduced:,} at 1/{JPEG_SCALES[-1]} scale)" if reduced is not None else ""
    raise InvalidImage(
        "image_too_large",
        f"{name}: {width}x{height} is {width * height:,} pixels{at_scale}, more than the limit of {max_pixels:,}",
    )


def _log_unexpected(name: str, exc: Exception) -> None:
    # The decoders' own errors for broken files are OSError, SyntaxError, ValueError and EOFError; anything
    # else from a decoder on hostile bytes is still a file it cannot read, but worth a look.
    if not isinstance(exc, OSError | SyntaxError | ValueError | EOFError | UnidentifiedImageError):
        logger.warning("%s: the decoder raised %s: %s", name, type(exc).__name__, exc)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: transparency goes onto white, 16- and 32-bit greys scale down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        grey = np.clip(pixels / scale * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
