"""Query vectors kept by id, so changing a search's parameters never embeds the same query twice."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache

from services.common.vocabulary import name_key


@dataclass(frozen=True)
class CachedQuery:
    query_id: str
    kind: str  # image, text, record
    vector: np.ndarray
    label: str  # what the query was, for people: file names, the text, the record id


def image_query_id(images: list[bytes]) -> str:
    """One id per set of images, whatever their order: the same photos are the same query."""
    digests = sorted(hashlib.sha256(data).hexdigest() for data in images)
    return "img-" + hashlib.sha256("".join(digests).encode()).hexdigest()[:32]


def text_query_id(text: str) -> str:
    """One id per text up to the vocabulary's name key (case, Unicode form, whitespace, invisible characters)."""
    return "txt-" + hashlib.sha256(name_key(text).encode()).hexdigest()[:32]


def record_query_id(record_id: int) -> str:
    return f"rec-{record_id}"


class QueryCache:
    """A bounded LRU of query vectors (a 768-d float32 vector is 3 KB: 10,000 of them are 30 MB)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # cachetools is not thread-safe: every use takes the lock, as its documentation advises.
        self._entries: LRUCache[str, CachedQuery] = LRUCache(maxsize=max(capacity, 1))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, query_id: str) -> CachedQuery | None:
        with self._lock:
            entry = self._entries.get(query_id)
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
            return entry

    def put(self, entry: CachedQuery) -> CachedQuery:
        if self.capacity > 0:
            with self._lock:
                self._entries[entry.query_id] = entry
        return entry

    def __len__(self) -> int:
        return len(self._entries)


def mean_direction(vectors: list[list[float]]) -> np.ndarray:
    """Several photos of one organism: the normalised mean of their (normalised) vectors."""
    stacked = np.asarray(vectors, dtype=np.float32)
    mean = stacked.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else stacked[0]
