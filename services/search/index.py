"""The FAISS side of a search: open an index file and find the nearest vector ids."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)


class IndexOpenError(RuntimeError):
    """The index file is missing or unreadable."""


@dataclass(frozen=True)
class Neighbours:
    similarities: np.ndarray  # (queries, k) float32, inner products of normalised vectors
    ids: np.ndarray  # (queries, k) int64, -1 where the index had fewer than k
    nprobe: int | None


class VectorIndex:
    """A FAISS index, safe to search from several threads at once."""

    def __init__(self, index: faiss.Index, path: Path) -> None:
        self.index = index
        self.path = path
        try:
            self._ivf: faiss.IndexIVF | None = faiss.extract_index_ivf(index)
        except RuntimeError:
            self._ivf = None
        # nprobe travels in per-call parameters when the IVF is the top-level index; a wrapped
        # IVF (a pre-transform, say) only reads its own attribute, so those calls take turns.
        self._params_work = self._ivf is not None and self._ivf is index
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, mmap: bool) -> VectorIndex:
        if not path.is_file():
            raise IndexOpenError(f"no FAISS index at {path}")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise IndexOpenError(f"could not read the FAISS index at {path}: {exc}") from exc
        logger.info("opened %s: %s, %d vectors, dim %d", path, type(index).__name__, index.ntotal, index.d)
        return cls(index, path)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int | None:
        return int(self._ivf.nlist) if self._ivf is not None else None

    @property
    def kind(self) -> str:
        return type(self.index).__name__

    @property
    def metric(self) -> str:
        return "inner_product" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"

    def clamp_nprobe(self, nprobe: int) -> int | None:
        return None if self.nlist is None else max(1, min(nprobe, self.nlist))

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> Neighbours:
        k = max(1, min(k, self.size))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        used = self.clamp_nprobe(nprobe)
        if self._ivf is None:
            similarities, ids = self.index.search(queries, k)
        elif self._params_work:
            similarities, ids = self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=used))
        else:
            with self._lock:
                self._ivf.nprobe = used
                similarities, ids = self.index.search(queries, k)
        return Neighbours(similarities=similarities, ids=ids, nprobe=used)
