"""The index interface the search engine asks for nearest ids, whichever engine holds the vectors.

Two implementations, chosen once at start-up by SEARCH_BACKEND (services/search/app.py):

- `faiss`: `VectorIndex` (services/search/index.py), one FAISS file on this machine. It cannot
  filter inside the search: the engine over-fetches, judges the neighbours by the record lookup
  and widens until top_n pass;
- `milvus`: `MilvusIndex` (services/search/milvus.py), a Milvus collection (a server, or the
  embedded milvus-lite). It filters during the search on scalar fields made from the same
  vocabulary, so what it returns already passes the scope and the taxon filters.

Either way the hits' rows come from the record lookup (sidecar or DuckDB), and the engine's fill
loop and stated bounds are the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from services.search.filters import Criteria

logger = logging.getLogger(__name__)

Backend = Literal["faiss", "milvus"]


@dataclass(frozen=True)
class Neighbours:
    similarities: np.ndarray  # (queries, k) float32, cosine for normalised vectors (L2 converted)
    ids: np.ndarray  # (queries, k) int64, -1 where the index had fewer than k within reach
    nprobe: int | None
    ef_search: int | None


@dataclass(frozen=True)
class StoredVector:
    id: int
    vector: np.ndarray
    exact: bool
    encoding: str


class NearestIndex(Protocol):
    """Nearest stored vectors by inner product; safe to search from several threads at once."""

    backend: Backend
    filters_in_search: bool
    """True: `search` returns only neighbours that pass its `criteria` (the engine need not over-fetch for them)."""

    @property
    def dim(self) -> int: ...

    @property
    def size(self) -> int:
        """Vectors held."""
        ...

    @property
    def nlist(self) -> int | None:
        """IVF lists, None for an index without lists."""
        ...

    @property
    def kind(self) -> str:
        """The index type as its engine names it (a FAISS class, or `Milvus <index type>`)."""
        ...

    @property
    def metric(self) -> str: ...

    @property
    def coarse_quantizer(self) -> str | None: ...

    @property
    def reconstructs(self) -> bool:
        """Whether `reconstruct` can answer."""
        ...

    def clamp_nprobe(self, nprobe: int) -> int | None:
        """nprobe within 1..nlist; None for an index without lists."""
        ...

    def search(
        self, queries: np.ndarray, k: int, nprobe: int, ef_search: int, criteria: Criteria | None = None
    ) -> Neighbours:
        """The k nearest of each normalised query (queries: (n, dim) float32), most similar first."""
        ...

    def reconstruct(self, record_id: int) -> StoredVector:
        """The stored vector of an id; `UnknownRecord` when there is none."""
        ...

    def close(self) -> None:
        """Let go of connections and files (at shutdown)."""
        ...
