"""Re-encode a fetched image at the size asked for, with no metadata carried over."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from services.common.images import decode_image


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str


def render(data: bytes, *, longest_side: int | None, image_format: str, max_pixels: int) -> Rendered:
    """Decode (allowlisted formats only), shrink to `longest_side` (None: keep the size), re-encode.

    Re-encoding always, even at full size, drops EXIF/GPS and anything else riding in the file.
    """
    image = decode_image(data, "source image", max_pixels)
    if longest_side is not None and max(image.size) > longest_side:
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format == "WEBP":
        image.save(out, format="WEBP", quality=82, method=4)
        return Rendered(out.getvalue(), "image/webp")
    image.save(out, format="JPEG", quality=85, optimize=True)
    return Rendered(out.getvalue(), "image/jpeg")
