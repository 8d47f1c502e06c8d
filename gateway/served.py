"""The image URLs of the hits the gateway has just served, so their images load without asking search.

A page shows a result's thumbnails right after the search answered; keeping those URLs (bounded,
least recently served dropped first) means images already on screen still load while search is
down or stalled. Used from the event loop only, so no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cachetools import LRUCache

from gateway.schemas import HitView

logger = logging.getLogger(__name__)


class ServedImages:
    """record id -> image URL for up to `size` recently served hits (about 200 bytes each)."""

    def __init__(self, size: int) -> None:
        self._urls: LRUCache[int, str] | None = LRUCache(maxsize=size) if size > 0 else None

    def remember(self, hits: Iterable[HitView]) -> None:
        if self._urls is None:
            return
        for hit in hits:
            if hit.image_url:
                self._urls[hit.record_id] = hit.image_url

    def url(self, record_id: int) -> str | None:
        return None if self._urls is None else self._urls.get(record_id)

    def __len__(self) -> int:
        return 0 if self._urls is None else len(self._urls)
