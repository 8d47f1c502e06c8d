"""A small JPEG of a photo query, kept beside its vector, so a permalink shows the photo while the
gateway still holds the query."""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageOps

from services.common.images import ALLOWED_FORMATS, to_rgb

logger = logging.getLogger(__name__)

PREVIEW_SIDE = 320  # pixels, the longer side: the page shows it at most ~240 CSS px wide
PREVIEW_QUALITY = 80


def query_preview(data: bytes, name: str) -> bytes | None:
    """A JPEG at most PREVIEW_SIDE pixels on its longer side (EXIF orientation applied), or None when the
    photo can't be read here: a preview is a convenience, never a reason to fail the search. Called after
    the embedder accepted the photo, so its size is within the embedder's pixel limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
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
