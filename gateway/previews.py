"""A JPEG preview of an upload, for photos the browser cannot show itself (HEIC outside Safari, TIFF)."""

from __future__ import annotations

import io
import logging

from PIL import Image

from services.common.images import decode_image

logger = logging.getLogger(__name__)


def preview_jpeg(data: bytes, name: str, *, longest_side: int, max_pixels: int) -> bytes:
    """JPEG bytes (quality 80, no metadata) of the upload, its longest side at most `longest_side` pixels.

    Decoded by the shared decoder, as the search decodes it (orientation applied, a large JPEG at reduced
    scale). Raises services.common.images.InvalidImage as decode_image does.
    """
    image = decode_image(data, name, max_pixels, longest_side=longest_side)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()
