"""A search: nearest ids from the index, judged against the scope and filters, filled to top_n, with rows.

A filtered search asks the index for more neighbours than it needs (over-fetch), judges them, and
when too few pass it widens, several queries at once: more candidates (by the pass rate seen so
far) and, once the visited IVF lists run dry, more lists (nprobe x4). It stops when every query
has top_n hits or a stated bound is hit (`Limits`), and says which (`stopped`). An index that filters
during the search (Milvus: services/search/nearest.py) is asked for top_n in the scope and filters at once;
its neighbours are screened the same way, and the same loop widens when its visited lists run dry.

Two edges of real indexes: an id the index holds more than once is one hit (its best similarity; the
others do not count toward top_n), and a stored vector that is NaN or zero has no similarity: it is never
a hit, and reading it back (`vector`) is `UnusableVector`. A `min_similarity` stop on an IVF index is
taken only once visiting more lists no longer brings more neighbours above the threshold: the lists a
query did not visit can hold records more similar than the least similar of the lists it did.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import DimensionMismatch, InvalidVector
from services.common.vocabulary import SearchParameters, Stopped, TaxonFilter
from services.search.errors import UnknownRecord, UnusableVector
from services.search.filters import Criteria
from services.search.lookup import RecordLookup
from services.search.metadata import Row
from services.search.nearest import NearestIndex, StoredVector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """How far a search may widen to fill top_n: the bound the response refers to (values: the settings)."""

    max_candidates: int
    max_nprobe: int
    max_rounds: int
    overfetch: float
    default_ef_search: int


@dataclass(frozen=True)
class Query:
    vectors: np.ndarray
    top_n: int
    nprobe: int
    scope: str = SearchParameters.model_fields["scope"].default
    filters: tuple[TaxonFilter, ...] = ()
    min_similarity: float | None = None
    max_per_source: int | None = None
    max_per_species: int | None = None
    ef_search: int | None = None

    @property
    def criteria(self) -> Criteria:
        return Criteria(scope=self.scope, filters=self.filters)

    @property
    def plain(self) -> bool:
        """Every neighbour is a hit: no scope, filter or cap to pass."""
        return self.criteria.selects_all and self.max_per_source is None and self.max_per_species is None


@dataclass(frozen=True)
class FoundHit:
    rank: int
    similarity: float
    row: Row


@dataclass
class QueryOutcome:
    hits: list[FoundHit]
    candidates: int
    rounds: int
    nprobe: int | None
    ef_search: int | None
    stopped: Stopped

    @property
    def exhausted(self) -> bool:
        return self.stopped != "filled"


@dataclass
class Timings:
    index_ms: float = 0.0
    screen_ms: float = 0.0
    fetch_ms: float = 0.0


@dataclass(frozen=True)
class SearchOutcome:
    results: list[QueryOutcome]
    nprobe: int | None
    rounds: int
    timings: Timings
    took_ms: float


@dataclass
class _State:
    """One query's progress across rounds."""

    hits: list[tuple[int, float]] = field(default_factory=list)  # (id, similarity) accepted, in order
    examined: int = 0
    passed: int = 0
    outcome: QueryOutcome | None = None
    # The lists visited and the neighbours at or above min_similarity found in them, last round.
    last_nprobe: int | None = None
    last_above: int = -1


class SearchEngine:
    def __init__(self, index: NearestIndex, lookup: RecordLookup, limits: Limits) -> None:
        self.index = index
        self.lookup = lookup
        self.limits = limits

    def _normalised(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.index.dim:
            got = vectors.shape[-1] if vectors.ndim else 0
            raise DimensionMismatch(f"query vectors have {got} dimensions; this index holds {self.index.dim}-d vectors")
        if not np.all(np.isfinite(vectors)):
            raise InvalidVector("query vectors contain NaN or infinity")
        # The norm in float64: float32 values near their limit would overflow it.
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
        if np.any(norms == 0):
            raise InvalidVector("a query vector is all zeros")
        return (vectors / norms).astype(np.float32)

    def search(self, query: Query) -> SearchOutcome:
        started = time.perf_counter()
        vectors = self._normalised(query.vectors)
        timings = Timings()
        limits = self.limits
        reach = min(limits.max_candidates, self.index.size)
        nprobe = self.index.clamp_nprobe(query.nprobe)
        first_nprobe = nprobe
        nlist = self.index.nlist
        max_nprobe = None if nlist is None else min(nlist, max(limits.max_nprobe, nprobe or 1))
        ef = query.ef_search or limits.default_ef_search
        # An index that filters during the search returns only neighbours in the scope and filters: it is
        # over-fetched only for the caps, which it cannot apply. Its neighbours are still screened below.
        in_search = self.index.filters_in_search
        fits = query.plain or (in_search and query.max_per_source is None and query.max_per_species is None)
        criteria = query.criteria if in_search and not query.criteria.selects_all else None
        k = query.top_n if fits else math.ceil(query.top_n * limits.overfetch)
        states = [_State() for _ in range(len(vectors))]
        rows: dict[int, Row] = {}
        screened: dict[int, tuple[bool, Any]] = {}
        rounds = 0
        pending = list(range(len(vectors)))
        while pending:
            rounds += 1
            k = max(min(k, reach), 1)
            widen = False
            tick = time.perf_counter()
            found = self.index.search(vectors[pending], k, nprobe or 1, ef, criteria)
            timings.index_ms += (time.perf_counter() - tick) * 1000
            # Judge every new candidate of every pending query in one call.
            tick = time.perf_counter()
            fresh = np.unique(found.ids[found.ids >= 0])
            fresh = fresh[[int(i) not in screened for i in fresh]] if screened else fresh
            if len(fresh):
                verdict = self.lookup.screen(fresh, query.criteria)
                verdicts = zip(fresh.tolist(), verdict.keep.tolist(), verdict.species, strict=True)
                for record_id, keep, species in verdicts:
                    screened[record_id] = (keep, species)
                rows.update(verdict.rows)
            timings.screen_ms += (time.perf_counter() - tick) * 1000
            still: list[int] = []
            next_k = k
            for position, q in enumerate(pending):
                ids = found.ids[position]
                sims = found.similarities[position]
                valid = ids >= 0
                returned = int(valid.sum())
                ids, sims = ids[valid], sims[valid]
                # A stored NaN vector has no similarity (FAISS gives NaN): it can never be a hit.
                finite = np.isfinite(sims)
                ids, sims = ids[finite], sims[finite]
                state = states[q]
                below = False
                if query.min_similarity is not None:
                    reached = bool(len(sims)) and bool(sims[-1] < query.min_similarity)
                    above = sims >= query.min_similarity
                    ids, sims = ids[above], sims[above]
                    below = reached and not self._more_lists_may_qualify(state, nprobe, max_nprobe, len(sims))
                    if reached and not below:
                        widen = True  # the threshold was reached only within the lists visited
                    state.last_nprobe, state.last_above = nprobe, len(sims)
                tick = time.perf_counter()
                self._accept(state, ids, sims, query, screened, rows)
                timings.fetch_ms += (time.perf_counter() - tick) * 1000
                state.examined = returned
                stop = self._stop_reason(
                    state, query, k=k, returned=returned, below=below, reach=reach,
                    nprobe=nprobe, max_nprobe=max_nprobe, rounds=rounds,
                )  # fmt: skip
                if stop is not None:
                    state.outcome = QueryOutcome([], state.examined, rounds, nprobe, found.ef_search, stop)
                    continue
                still.append(q)
                if returned < k:
                    widen = True  # the lists visited hold fewer than k vectors: visit more lists
                need = query.top_n - len(state.hits)
                rate = max(state.passed, 1) / max(state.examined, 1)
                next_k = max(next_k, min(8 * k, max(2 * k, math.ceil(state.examined + 1.5 * need / rate))))
            pending = still
            if widen and nprobe is not None and max_nprobe is not None:
                nprobe = min(nprobe * 4, max_nprobe)
            k = min(next_k, reach)
        tick = time.perf_counter()
        results = self._results(states, rows)
        timings.fetch_ms += (time.perf_counter() - tick) * 1000
        return SearchOutcome(
            results=results,
            nprobe=first_nprobe,
            rounds=rounds,
            timings=timings,
            took_ms=(time.perf_counter() - started) * 1000,
        )

    @staticmethod
    def _more_lists_may_qualify(state: _State, nprobe: int | None, max_nprobe: int | None, above: int) -> bool:
        """Whether an IVF query that met min_similarity in the lists it visited should visit more lists: yes
        until it may visit no more, or visiting more (last round) brought no new neighbour above it."""
        if nprobe is None or max_nprobe is None or nprobe >= max_nprobe:
            return False
        widened_last_round = state.last_nprobe is not None and state.last_nprobe < nprobe
        return not (widened_last_round and above <= state.last_above)

    def _accept(
        self,
        state: _State,
        ids: np.ndarray,
        sims: np.ndarray,
        query: Query,
        screened: dict[int, tuple[bool, Any]],
        rows: dict[int, Row],
    ) -> None:
        """Walk this round's candidates in order and keep the first top_n that pass and fit the caps.

        Candidates come most similar first, so an id the index holds more than once counts once, at its best
        similarity."""
        state.hits = []
        state.passed = 0
        per_species: dict[Any, int] = {}
        per_source: dict[str, int] = {}
        candidates: list[tuple[int, float]] = []
        seen: set[int] = set()
        for record_id, similarity in zip(ids.tolist(), sims.tolist(), strict=True):
            if record_id not in seen:
                seen.add(record_id)
                candidates.append((int(record_id), float(similarity)))
        passing = [(i, s) for i, s in candidates if screened.get(i, (False, None))[0]]
        state.passed = len(passing)
        position = 0
        while position < len(passing) and len(state.hits) < query.top_n:
            if query.max_per_source is not None:
                # Source ids live in the rows: fetch the next few passing candidates' rows.
                need = 2 * (query.top_n - len(state.hits)) + 8
                missing = [i for i, _ in passing[position : position + need] if i not in rows]
                if missing:
                    rows.update(self.lookup.fetch(missing))
            record_id, similarity = passing[position]
            position += 1
            species = screened[record_id][1]
            cap = query.max_per_species
            if cap is not None and species is not None and per_species.get(species, 0) >= cap:
                continue
            if query.max_per_source is not None:
                row = rows.get(record_id)
                source = row.get("source_id") if row is not None else None
                if source is not None and per_source.get(source, 0) >= query.max_per_source:
                    continue
                if source is not None:
                    per_source[source] = per_source.get(source, 0) + 1
            if species is not None:
                per_species[species] = per_species.get(species, 0) + 1
            state.hits.append((record_id, similarity))

    def _stop_reason(
        self,
        state: _State,
        query: Query,
        *,
        k: int,
        returned: int,
        below: bool,
        reach: int,
        nprobe: int | None,
        max_nprobe: int | None,
        rounds: int,
    ) -> Stopped | None:
        if len(state.hits) >= query.top_n:
            return "filled"
        if below:
            return "min_similarity"  # what is left is less similar than asked
        if returned < k:
            # The index gave all it could reach: the whole index (flat, HNSW), or every list visited.
            if nprobe is None or max_nprobe is None:
                return "exhausted"
            if nprobe >= max_nprobe:
                return "exhausted" if max_nprobe >= (self.index.nlist or 0) else "max_nprobe"
        elif k >= reach:
            return "exhausted" if reach >= self.index.size else "max_candidates"
        if rounds >= self.limits.max_rounds:
            return "max_rounds"
        return None

    def _results(self, states: list[_State], rows: dict[int, Row]) -> list[QueryOutcome]:
        wanted = {record_id for state in states for record_id, _ in state.hits if record_id not in rows}
        if wanted:
            rows.update(self.lookup.fetch(wanted))
        results = []
        for state in states:
            outcome = state.outcome
            assert outcome is not None
            hits: list[FoundHit] = []
            for record_id, similarity in state.hits:
                row = rows.get(record_id)
                if row is None:
                    logger.warning("vector %d has no metadata row", record_id)
                    continue
                hits.append(FoundHit(rank=len(hits) + 1, similarity=similarity, row=row))
            outcome.hits = hits
            results.append(outcome)
        return results

    def record(self, record_id: int) -> Row:
        row = self.lookup.fetch([record_id]).get(record_id)
        if row is None:
            raise UnknownRecord(f"no record with id {record_id}")
        return row

    def vector(self, record_id: int) -> StoredVector:
        """The record's stored vector; `UnusableVector` when it has no direction (NaN, infinity, all zeros):
        nothing could be searched from it, and it is the collection's fault, not the caller's query."""
        stored = self.index.reconstruct(record_id)
        if not np.all(np.isfinite(stored.vector)):
            raise UnusableVector(record_id, "holds NaN or infinity")
        if not np.any(stored.vector):
            raise UnusableVector(record_id, "is all zeros")
        return stored
