"""JPEG previews of photos: of an upload the browser cannot show itself (HEIC outside Safari, TIFF), made
on request; and of a photo query, kept beside its vector so a permalink shows the photo while the gateway
still holds the query."""

from __future__ import annotations

import io
import logging
import warnings
from typing import IO

from PIL import Image, ImageOps

from services.common.images import ALLOWED_FORMATS, decode_image, to_rgb

logger = logging.getLogger(__name__)

PREVIEW_SIDE = 320  # pixels, the longer side of a query's preview: the page shows it at most ~240 CSS px wide
PREVIEW_QUALITY = 80


def preview_jpeg(data: bytes, name: str, *, longest_side: int, max_pixels: int) -> bytes:
    """JPEG bytes (quality 80, no metadata) of the upload, its longest side at most `longest_side` pixels.

    Decoded by the shared decoder, as the search decodes it (orientation applied, a large JPEG at reduced
    scale). Raises services.common.images.InvalidImage as decode_image does.
    """
    image = decode_image(data, name, max_pixels, longest_side=longest_side)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=PREVIEW_QUALITY)
    return out.getvalue()


def query_preview(file: IO[bytes], name: str) -> bytes | None:
    """A JPEG at most PREVIEW_SIDE pixels on its longer side (EXIF orientation applied), or None when the
    photo can't be read here: a preview is a convenience, never a reason to fail the search.

    `file` is the upload where it was spooled (read from its start; never copied whole into memory: PIL
    reads it as it decodes, a JPEG at reduced scale). Called after the embedder accepted the photo, so its
    size is within the embedder's pixel limit.
    """
    try:
        file.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file, formats=ALLOWED_FORMATS)
            image.draft("RGB", (PREVIEW_SIDE * 2, PREVIEW_SIDE * 2))  # JPEG: decode at a reduced scale
            image.load()
        image = to_rgb(ImageOps.exif_transpose(image))
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=PREVIEW_QUALITY, optimize=True)
        return out.getvalue()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        logger.info("%s: no preview kept (%s)", name, exc)
        return None
