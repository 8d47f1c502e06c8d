"""Decode image bytes safely into 8-bit RGB: a format allowlist, a pixel limit, EXIF orientation."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's rarer decoders carry most of its security bugs: open only these.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")


class InvalidImage(ValueError):
    """Bytes that cannot be a query or a thumbnail. `code`: empty_file, not_an_image,
    image_too_large or corrupt_image."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode, apply EXIF orientation, and convert to 8-bit RGB."""
    if not data:
        raise InvalidImage("empty_file", f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(
                    "image_too_large", f"{name}: {width}x{height} pixels is more than the limit of {max_pixels}"
                )
            image.load()
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage("image_too_large", f"{name}: the image has too many pixels") from exc
    except UnidentifiedImageError as exc:
        allowed = ", ".join(ALLOWED_FORMATS)
        raise InvalidImage("not_an_image", f"{name}: not an image in a supported format ({allowed})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage("corrupt_image", f"{name}: the image is truncated or corrupt ({exc})") from exc
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: transparency goes onto white, 16- and 32-bit greys scale down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        grey = np.clip(pixels / scale * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
