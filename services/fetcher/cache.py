"""Rendered images, cached: a small LRU in memory in front of an LRU on disk that survives restarts.

The disk cache is plain files, one per (URL, size, rendering settings), under a two-letter
fan-out. A file's modification time is its last use (touched on every hit), so a restart rebuilds
the least-recently-used order from the folder alone. Its methods block: call them off the event loop.
"""

from __future__ import annotations

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
        found.sort()
        with self._lock:
            for _, key, path, size in found:
                self._index[key] = (path, size)
                self.bytes += size
            self._evict()
        logger.info("disk cache at %s: %d images, %d bytes", self.folder, len(self._index), self.bytes)

    def get(self, key: str) -> CachedImage | None:
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                return None
            self._index.move_to_end(key)
        path, _ = entry
        try:
            data = path.read_bytes()
            now = time.time()
            os.utime(path, (now, now))  # the last use, for the LRU order after a restart
        except FileNotFoundError:  # evicted by another thread meanwhile
            return None
        return CachedImage(data, _MEDIA[path.suffix], etag_of(data))

    def put(self, key: str, item: CachedImage) -> None:
        if not self.enabled or len(item.data) > self.max_bytes:
            return
        path = self.folder / key[:2] / (key + _SUFFIX[item.media_type])
        path.parent.mkdir(exist_ok=True)
        # Written aside, then renamed: a reader or a crash never sees half an image.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(item.data)
        os.replace(tmp, path)
        with self._lock:
            old = self._index.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._index[key] = (path, len(item.data))
            self.bytes += len(item.data)
            self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._index:
            _, (path, size) = self._index.popitem(last=False)
            self.bytes -= size
            self.evictions += 1
            path.unlink(missing_ok=True)
