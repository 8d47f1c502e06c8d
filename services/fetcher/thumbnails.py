"""Sizes: which published rendition to fetch for a size, and re-encoding with no metadata carried over.

Two sources publish their photos at several sizes: iNaturalist (named renditions) and Wikimedia
(thumbnails of any original at standard widths). The fetcher asks for the smallest one that still
serves the size wanted, and for a smaller one when the original is over the size cap.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

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


# Wikimedia (upload.wikimedia.org): an original at /<project>/<wiki>/<h>/<hh>/<Name>, its thumbnails at
# /<project>/<wiki>/thumb/<h>/<hh>/<Name>/<W>px-<Name> (an SVG's as PNG: <W>px-<Name>.png). Widths are
# Wikimedia's standard thumbnail steps ($wgThumbnailSteps, https://www.mediawiki.org/wiki/Common_thumbnail_sizes):
# any other width is served as the next step up, or throttled, so only these are asked for.
WIKIMEDIA_WIDTHS = (20, 40, 60, 120, 250, 330, 500, 960, 1280, 1920, 3840)
_WIKIMEDIA_ORIGINAL = re.compile(
    r"^(?P<head>/[^/]+/[^/]+/)(?P<hash>[0-9a-f]/[0-9a-f]{2}/)(?P<name>[^/]+\.(?:jpe?g|png|gif|webp|svg))$", re.I
)
_WIKIMEDIA_THUMB = re.compile(
    r"^(?P<head>/[^/]+/[^/]+/)thumb/(?P<hash>[0-9a-f]/[0-9a-f]{2}/)(?P<name>[^/]+\.(?:jpe?g|png|gif|webp|svg))"
    r"/(?P<width>\d+)px-[^/]+$",
    re.I,
)
# When the original is over the size cap: these widths, largest first, before giving up.
_WIKIMEDIA_FALLBACK_WIDTHS = (3840, 1920)
Layout = Literal["inaturalist", "wikimedia"]


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str


def smaller_rendition(url: str, layout: Layout | None, longest_side: int | None) -> str | None:
    """The URL of the smallest rendition that still serves `longest_side` (None: the full image), when
    it is smaller than the one named; None when the URL as given is the one to fetch.

    Never larger than the rendition named: the collection chose that one.
    """
    if layout == "inaturalist":
        return _smaller_inaturalist(url, longest_side)
    if layout == "wikimedia":
        return _smaller_wikimedia(url, longest_side)
    return None


def renditions_within_cap(url: str, layout: Layout | None) -> list[str]:
    """Smaller renditions to try, largest first, when the one named is over the size cap."""
    parts = urlsplit(url)
    if layout == "inaturalist":
        match = _INATURALIST_PATH.match(parts.path)
        if match and match["name"] == "original":
            return [urlunsplit(parts._replace(path=f"{match['head']}large{match['ext']}"))]
    elif layout == "wikimedia":
        named = _wikimedia_parts(parts.path)
        if named is not None:
            width = named[2] or WIKIMEDIA_WIDTHS[-1] + 1
            return [_wikimedia_thumb(parts, named, w) for w in _WIKIMEDIA_FALLBACK_WIDTHS if w < width]
    return []


def _smaller_inaturalist(url: str, longest_side: int | None) -> str | None:
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


def _wikimedia_parts(path: str) -> tuple[str, str, int | None, str] | None:
    """(head, hash folders, width or None for the original, file name) of a Wikimedia media path."""
    match = _WIKIMEDIA_ORIGINAL.match(path)
    if match:
        return match["head"], match["hash"], None, match["name"]
    match = _WIKIMEDIA_THUMB.match(path)
    if match:
        return match["head"], match["hash"], int(match["width"]), match["name"]
    return None


def _wikimedia_thumb(parts: SplitResult, named: tuple[str, str, int | None, str], width: int) -> str:
    head, folders, _, name = named
    thumb_name = f"{width}px-{name}" + (".png" if name.lower().endswith(".svg") else "")
    return urlunsplit(parts._replace(path=f"{head}thumb/{folders}{name}/{thumb_name}", query=""))


def _smaller_wikimedia(url: str, longest_side: int | None) -> str | None:
    if longest_side is None:
        return None
    parts = urlsplit(url)
    named = _wikimedia_parts(parts.path)
    if named is None:
        return None
    # A thumbnail's width bounds its longest side only for a landscape picture; a width at least the
    # longest side wanted serves both orientations.
    width = next((w for w in WIKIMEDIA_WIDTHS if w >= longest_side), None)
    if width is None or (named[2] is not None and width >= named[2]):
        return None
    return _wikimedia_thumb(parts, named, width)


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
