"""Decode image bytes safely into 8-bit RGB: a format allowlist, a pixel limit, EXIF orientation."""

from __future__ import annotations

import io
import logging
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Pillow's rarer decoders carry most of its security bugs: open only these.
BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")


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


ALLOWED_FORMATS: tuple[str, ...] = BASE_FORMATS + _heif_formats()

# How each allowed format is named to people (Pillow calls HEIC "HEIF").
FORMAT_NAMES = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "TIFF": "TIFF",
    "BMP": "BMP",
    "HEIF": "HEIC",
}


def _pillow_limit() -> int:
    return int(Image.MAX_IMAGE_PIXELS or 0) or 2**63


def allowed_format_names() -> str:
    return ", ".join(FORMAT_NAMES.get(fmt, fmt) for fmt in ALLOWED_FORMATS)


class InvalidImage(ValueError):
    """Bytes that cannot be a query or a thumbnail. `code`: empty_file, not_an_image,
    image_too_large or corrupt_image."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode (the first frame of an animation), apply EXIF orientation, and convert to 8-bit RGB."""
    if not data:
        raise InvalidImage("empty_file", f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(
                    "image_too_large",
                    f"{name}: {width}x{height} is {width * height:,} pixels, more than the limit of {max_pixels:,}",
                )
            image.load()
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check fires inside open(), before the size can be read: take it from its message.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels is" if found else "the image has"
        raise InvalidImage(
            "image_too_large", f"{name}: {size} more than the limit of {min(max_pixels, _pillow_limit()):,} pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(
            "not_an_image", f"{name}: not an image in a supported format ({allowed_format_names()})"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage("corrupt_image", f"{name}: the image is truncated or corrupt ({exc})") from exc
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        # A broken EXIF block should not cost the user their photo: use it as stored.
        logger.info("%s: EXIF orientation ignored (%s)", name, exc)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: transparency goes onto white, 16- and 32-bit greys scale down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        grey = np.clip(pixels / scale * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
