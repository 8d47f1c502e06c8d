"""Sizes: which published rendition to fetch for a size, and re-encoding with no metadata carried over."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from services.common.images import decode_image

# iNaturalist publishes every photo at /photos/<id>/<name>.<ext> in these renditions, by longest
# side; `square` (75 px) is a crop, not the whole picture, so it is never chosen. Original is at
# most 2048 px.
_INATURALIST_PATH = re.compile(r"^(?P<head>.*/photos/\d+/)(?P<name>original|large|medium|small)(?P<ext>\.\w+)$")
INATURALIST_RENDITIONS: tuple[tuple[str, int | None], ...] = (
    ("small", 240),
    ("medium", 500),
    ("large", 1024),
    ("original", None),
)


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str


def smaller_rendition(url: str, layout: str | None, longest_side: int | None) -> str | None:
    """The URL of the smallest rendition that still serves `longest_side` (None: the full image), when
    it is smaller than the one named; None when the URL as given is the one to fetch.

    Never larger than the rendition named: the collection chose that one.
    """
    if layout != "inaturalist":
        return None
    parts = urlsplit(url)
    match = _INATURALIST_PATH.match(parts.path)
    if not match:
        return None
    names = [name for name, _ in INATURALIST_RENDITIONS]
    named = names.index(match["name"])
    for name, side in INATURALIST_RENDITIONS[:named]:
        if longest_side is not None and side is not None and side >= longest_side:
            path = f"{match['head']}{name}{match['ext']}"
            return urlunsplit(parts._replace(path=path))
    return None


def render(data: bytes, *, longest_side: int | None, image_format: str, max_pixels: int) -> Rendered:
    """Decode (allowlisted formats only), shrink to `longest_side` (None: keep the size), re-encode.

    Re-encoding always, even at full size, drops EXIF/GPS and anything else riding in the file. A JPEG is
    decoded at the smallest DCT scale that still gives `longest_side`; at full size, one over `max_pixels` is
    decoded at the first scale (1/2, 1/4, 1/8) within it.
    """
    image = decode_image(data, "source image", max_pixels, longest_side=longest_side)
    if longest_side is not None and max(image.size) > longest_side:
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format == "WEBP":
        image.save(out, format="WEBP", quality=82, method=4)
        return Rendered(out.getvalue(), "image/webp")
    image.save(out, format="JPEG", quality=85, optimize=True)
    return Rendered(out.getvalue(), "image/jpeg")
