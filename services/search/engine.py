"""A search: nearest ids from the index, their metadata rows, and the scope filled to top_n."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from services.common.errors import NotFound, Unprocessable
from services.search.index import VectorIndex
from services.search.metadata import MetadataStore, Row, in_scope

logger = logging.getLogger(__name__)

# The first round asks for this many times top_n when a scope filters hits out.
OVERFETCH = 4


@dataclass(frozen=True)
class Query:
    vectors: np.ndarray
    top_n: int
    nprobe: int
    scope: str


@dataclass(frozen=True)
class FoundHit:
    rank: int
    similarity: float
    row: Row


@dataclass(frozen=True)
class QueryOutcome:
    hits: list[FoundHit]
    candidates: int
    exhausted: bool


@dataclass(frozen=True)
class SearchOutcome:
    results: list[QueryOutcome]
    nprobe: int | None
    took_ms: float


class SearchEngine:
    def __init__(self, index: VectorIndex, metadata: MetadataStore, *, max_candidates: int) -> None:
        self.index = index
        self.metadata = metadata
        self.max_candidates = max_candidates

    def search(self, query: Query) -> SearchOutcome:
        started = time.perf_counter()
        vectors = np.asarray(query.vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.index.dim:
            got = vectors.shape[-1] if vectors.ndim else 0
            raise Unprocessable(
                f"query vectors have {got} dimensions; this index holds {self.index.dim}-d vectors",
                code="dimension_mismatch",
            )
        if not np.all(np.isfinite(vectors)):
            raise Unprocessable("query vectors contain NaN or infinity", code="invalid_vector")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise Unprocessable("a query vector is all zeros", code="invalid_vector")
        vectors = vectors / norms
        results = [self._one(vector[None, :], query) for vector in vectors]
        return SearchOutcome(
            results=results,
            nprobe=self.index.clamp_nprobe(query.nprobe),
            took_ms=(time.perf_counter() - started) * 1000,
        )

    def _one(self, vector: np.ndarray, query: Query) -> QueryOutcome:
        k = query.top_n if query.scope == "all" else query.top_n * OVERFETCH
        limit = min(self.max_candidates, self.index.size)
        while True:
            k = min(max(k, query.top_n), limit)
            found = self.index.search(vector, k, query.nprobe)
            pairs = [(int(i), float(s)) for i, s in zip(found.ids[0], found.similarities[0], strict=True) if i >= 0]
            rows = self.metadata.fetch(i for i, _ in pairs)
            hits: list[FoundHit] = []
            for record_id, similarity in pairs:
                row = rows.get(record_id)
                if row is None:
                    logger.warning("vector %d has no metadata row", record_id)
                    continue
                if in_scope(row, query.scope):
                    hits.append(FoundHit(rank=len(hits) + 1, similarity=similarity, row=row))
                    if len(hits) == query.top_n:
                        return QueryOutcome(hits=hits, candidates=k, exhausted=False)
            # Fewer neighbours came back than asked for: the index (at this nprobe) has no more.
            if k >= limit or len(pairs) < k:
                return QueryOutcome(hits=hits, candidates=k, exhausted=True)
            k *= 4

    def record(self, record_id: int) -> Row:
        row = self.metadata.get(record_id)
        if row is None:
            raise NotFound(f"no record with id {record_id}", code="unknown_record")
        return row
