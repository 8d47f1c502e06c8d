"""Rendered images, cached: a small LRU in memory in front of an LRU on disk that survives restarts.

The disk cache is plain files, one per (URL, size, rendering settings), under a two-letter
fan-out. A file's modification time is its last use (touched on every hit), so a restart rebuilds
the least-recently-used order from the folder alone. Its methods block: call them off the event loop.
The disk cache never fails a request: any I/O error (the folder gone or replaced by a file, no
permission, a full disk) or an entry that is not whole is a miss, logged once per cause.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

logger = logging.getLogger(__name__)

_SUFFIX = {"image/webp": ".webp", "image/jpeg": ".jpg"}
_MEDIA = {suffix: media for media, suffix in _SUFFIX.items()}


@dataclass(frozen=True)
class CachedImage:
    data: bytes
    media_type: str
    etag: str  # quoted, as it goes in the ETag header


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def is_whole(data: bytes, media_type: str) -> bool:
    """The bytes are a whole file of the type the cache writes: a WebP's RIFF header states its
    length; a JPEG ends with its end-of-image marker. Cheap, and catches a truncated entry."""
    if media_type == "image/webp":
        return len(data) >= 12 and data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 == len(data)
    if media_type == "image/jpeg":
        return data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"
    return False


def cache_key(url: str, size: str, longest_side: int | None, image_format: str) -> str:
    """Includes what the rendering depends on, so changed settings never serve an old rendition."""
    return hashlib.sha256(f"{size}:{longest_side}:{image_format}\n{url}".encode()).hexdigest()


def _image_bytes(item: CachedImage) -> int:
    return len(item.data)


class MemoryCache:
    """The most recently used images, up to `max_bytes` of image data in all (cachetools' LRU, sized by bytes).

    Used from the event loop only (the pipeline never calls it from a worker thread), so it takes no lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self._items: LRUCache[str, CachedImage] = LRUCache(maxsize=max_bytes, getsizeof=_image_bytes)

    @property
    def max_bytes(self) -> int:
        return int(self._items.maxsize)

    @property
    def bytes(self) -> int:
        return int(self._items.currsize)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> CachedImage | None:
        return self._items.get(key)

    def put(self, key: str, item: CachedImage) -> None:
        # One big image must not flush everything else out.
        if len(item.data) > self.max_bytes // 4:
            return
        self._items[key] = item


class DiskCache:
    """Files under `folder`, at most `max_bytes` in all; least recently used evicted first."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._index: OrderedDict[str, tuple[Path, int]] = OrderedDict()  # oldest use first
        self._lock = threading.Lock()
        self._causes_logged: set[tuple[str, str]] = set()
        self.io_errors = 0

    def __len__(self) -> int:
        return len(self._index)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def open(self) -> None:
        """Create the folder, or read back what a previous run left in it."""
        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Images can still be served, only not kept: say so loudly, but keep the service up.
            logger.error("no disk cache: cannot create %s (%s)", self.folder, exc)
            self.max_bytes = 0
            return
        found: list[tuple[float, str, Path, int]] = []
        try:
            for path in self.folder.glob("??/*"):
                if path.name.endswith(".tmp"):  # a write cut short by a crash
                    path.unlink(missing_ok=True)
                    continue
                if path.suffix not in _MEDIA:
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                found.append((stat.st_mtime, path.stem, path, stat.st_size))
        except OSError as exc:  # what could be read is kept; the rest is a miss when asked for
            self._io_error("list", exc)
        found.sort()
        with self._lock:
            for _, key, path, size in found:
                self._index[key] = (path, size)
                self.bytes += size
            self._evict()
        logger.info("disk cache at %s: %d images, %d bytes", self.folder, len(self._index), self.bytes)

    def get(self, key: str) -> CachedImage | None:
        """The image cached under `key`, or None (not cached, or not readable whole: a miss)."""
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                return None
            self._index.move_to_end(key)
        path, size = entry
        try:
            data = path.read_bytes()
            now = time.time()
            os.utime(path, (now, now))  # the last use, for the LRU order after a restart
        except FileNotFoundError:  # evicted by another thread meanwhile
            self._forget(key, path)
            return None
        except OSError as exc:
            self._io_error("read", exc)
            self._forget(key, path)
            return None
        media_type = _MEDIA[path.suffix]
        if len(data) != size or not is_whole(data, media_type):
            self._io_error("read", ValueError(f"{path.name} is truncated or damaged"))
            self._forget(key, path)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        return CachedImage(data, media_type, etag_of(data))

    def put(self, key: str, item: CachedImage) -> None:
        """Keep `item` under `key`; an I/O error costs the cache entry only (logged, never raised)."""
        if not self.enabled or len(item.data) > self.max_bytes:
            return
        path = self.folder / key[:2] / (key + _SUFFIX[item.media_type])
        # Written aside, then renamed: a reader or a crash never sees half an image.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(item.data)
            os.replace(tmp, path)
        except OSError as exc:
            self._io_error("write", exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        with self._lock:
            old = self._index.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._index[key] = (path, len(item.data))
            self.bytes += len(item.data)
            self._evict()

    def _forget(self, key: str, path: Path) -> None:
        with self._lock:
            entry = self._index.get(key)
            if entry is not None and entry[0] == path:
                del self._index[key]
                self.bytes -= entry[1]

    def _io_error(self, operation: str, exc: Exception) -> None:
        """Count every one; log the first of each cause (an errno, or a kind of damage) per operation."""
        self.io_errors += 1
        cause = (operation, errno.errorcode.get(exc.errno, str(exc.errno)) if isinstance(exc, OSError) else "damaged")
        if cause not in self._causes_logged:
            self._causes_logged.add(cause)
            logger.warning(
                "disk cache at %s: cannot %s an entry (%s); treating it as a miss, further such errors are not logged",
                self.folder,
                operation,
                exc,
            )

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._index:
            _, (path, size) = self._index.popitem(last=False)
            self.bytes -= size
            self.evictions += 1
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self._io_error("evict", exc)
