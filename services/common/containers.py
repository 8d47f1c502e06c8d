"""Reading image containers ahead of their decoders: metadata chunks left out, the size a HEIF/AVIF file declares.

Nothing here decodes a pixel. Both readers walk length-prefixed structures with every length checked against
the bytes present, so a hostile length can neither read past the end nor allocate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG chunks that carry only text (tEXt, zTXt, iTXt: XMP, comments, raw profiles) or a colour profile (iCCP)
# (PNG specification, 3rd edition, 11.3). The decoder needs none of them to give the pixels, and Pillow refuses
# the whole file when one inflates past PngImagePlugin.MAX_TEXT_CHUNK (1 MB) or all of them past MAX_TEXT_MEMORY
# (64 MB): an ICC profile or an XMP packet of a few megabytes is ordinary in files from photo editors.
# eXIf stays: it holds the orientation.
PNG_METADATA_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP"})

# JPEG application segments (ITU T.81 B.2.4.6) and comments that the decoder does not need. Kept: APP1 "Exif"
# (orientation) and APP14 "Adobe" (tells libjpeg whether CMYK/YCCK colours were transformed). Each segment is
# at most 64 KB, but Pillow parses several (JFIF, ICC, MPF, Photoshop) at open, and a malformed one costs the
# picture.
_JPEG_KEPT_APP = ((0xE1, b"Exif\x00\x00"), (0xEE, b"Adobe"))


def without_metadata(data: bytes) -> bytes:
    """`data` with the metadata chunks of a PNG or the metadata segments of a JPEG left out; other formats,
    and files with nothing to leave out, are returned as they are (the same object).

    A chunk or segment cut short by the end of the file is left in place: the decoder then reports the file
    as truncated, which it is.
    """
    if data.startswith(PNG_SIGNATURE):
        return _png_without_metadata(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_without_metadata(data)
    return data


def _png_without_metadata(data: bytes) -> bytes:
    kept: list[bytes] = []
    start, pos = 0, len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            break
        if kind in PNG_METADATA_CHUNKS:
            kept.append(data[start:pos])
            start = end
        if kind == b"IEND":
            break
        pos = end
    if not kept:
        return data
    kept.append(data[start:])
    return b"".join(kept)


def _jpeg_without_metadata(data: bytes) -> bytes:
    kept: list[bytes] = []
    start, pos = 0, 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xDA, 0xD9, 0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            break  # start of scan (entropy-coded data follows), or a marker with no length
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data):
            break
        if _jpeg_metadata(marker, data[pos + 4 : end]):
            kept.append(data[start:pos])
            start = end
        pos = end
    if not kept:
        return data
    kept.append(data[start:])
    return b"".join(kept)


def _jpeg_metadata(marker: int, body: bytes) -> bool:
    if marker == 0xFE:  # COM
        return True
    if not 0xE0 <= marker <= 0xEF:
        return False
    return not any(marker == app and body.startswith(tag) for app, tag in _JPEG_KEPT_APP)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of each ISO base media file format box (ISO/IEC 14496-12 4.2) in
    data[start:end]; a box cut short by the end is given with what is there."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > end:
                return
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            header = 16
        elif size == 0:  # the box runs to the end
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, min(pos + size, end)
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for found, body, body_end in _boxes(data, start, end):
        if found == kind:
            return body, body_end
    return None


def _uint(data: bytes, pos: int, size: int, end: int) -> int | None:
    if pos + size > end:
        return None
    return int.from_bytes(data[pos : pos + size], "big")


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels that a HEIF or AVIF file declares for its primary image, read from the
    image spatial extents (`ispe`) property that HEIF requires of every image item (ISO/IEC 23008-12 6.5.3);
    None when the file declares none that can be read.

    The primary item is named by `pitm`; when the file does not tie an `ispe` to it, the largest `ispe` of the
    file is taken (the primary image of a grid is larger than its tiles, thumbnails and depth maps).
    """
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        return None
    meta_start, meta_end = meta[0] + 4, meta[1]  # meta is a full box: version and flags first
    properties: list[tuple[bytes, int, int]] = []
    iprp = _child(data, meta_start, meta_end, b"iprp")
    if iprp is not None:
        ipco = _child(data, *iprp, b"ipco")
        if ipco is not None:
            properties = list(_boxes(data, *ipco))
    sizes = [size for kind, body, end in properties if kind == b"ispe" and (size := _ispe(data, body, end))]
    if not sizes:
        return None
    primary = _primary_properties(data, meta_start, meta_end, iprp)
    for index in primary:
        if 1 <= index <= len(properties) and properties[index - 1][0] == b"ispe":
            size = _ispe(data, properties[index - 1][1], properties[index - 1][2])
            if size is not None:
                return size
    return max(sizes, key=lambda size: size[0] * size[1])


def _ispe(data: bytes, body: int, end: int) -> tuple[int, int] | None:
    width = _uint(data, body + 4, 4, end)
    height = _uint(data, body + 8, 4, end)
    if not width or not height:
        return None
    return width, height


def _primary_properties(data: bytes, meta_start: int, meta_end: int, iprp: tuple[int, int] | None) -> list[int]:
    """1-based indices into `ipco` of the properties that `ipma` associates with the `pitm` item."""
    pitm = _child(data, meta_start, meta_end, b"pitm")
    ipma = _child(data, *iprp, b"ipma") if iprp is not None else None
    if pitm is None or ipma is None or pitm[0] >= pitm[1]:
        return []
    primary = _uint(data, pitm[0] + 4, 2 if data[pitm[0]] == 0 else 4, pitm[1])
    body, end = ipma
    if body + 8 > end:
        return []
    version, flags = data[body], int.from_bytes(data[body + 1 : body + 4], "big")
    count = int.from_bytes(data[body + 4 : body + 8], "big")
    id_size, index_size = (2 if version < 1 else 4), (2 if flags & 1 else 1)
    pos = body + 8
    for _ in range(count):
        item = _uint(data, pos, id_size, end)
        associations = _uint(data, pos + id_size, 1, end)
        if item is None or associations is None:
            return []
        pos += id_size + 1
        indices = []
        for _ in range(associations):
            value = _uint(data, pos, index_size, end)
            if value is None:
                return []
            indices.append(value & (0x7FFF if index_size == 2 else 0x7F))  # the top bit marks "essential"
            pos += index_size
        if item == primary:
            return indices
    return []
