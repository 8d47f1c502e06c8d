"""What a similarity means for the model and collection served, measured on the collection's own records.

A cosine similarity of 0.6 is high for one model and low for another, and it depends on the
collection too. So the search service measures it, once after start-up, in the background:

1. sample stored vectors without a direct map of the index: for an IVF index, uniform positions
   among all its entries, each a (list, offset) pair decoded by `reconstruct_from_offset` (a few
   random reads of the lists, memory-mapped or not; no id -> list map of 200M ids); for a flat or
   HNSW index, `reconstruct` by position;
2. search the index with each (normalised, as a query is) and read the neighbours' rows through the
   record lookup (sidecar or DuckDB: the same rows the hits get);
3. record the similarity of the nearest other record of the same species, of the nearest record of
   another genus, and of pairs of sampled records of different genera (unrelated photos).

It is measured when the service starts rather than when a collection is built or downloaded: the
published collection is downloaded, not built here, and measuring what is served keeps the numbers
true for whatever index, metadata and nprobe are in use, with no derived file to keep in step.
Its cost is the sample's: a few hundred searches and rows, whatever the collection's size. The
numbers are the index's own (decoded PQ codes for a PQ index), so they are on the scale the hits
are. A fixed seed makes the same collection give the same numbers at every start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import faiss
import numpy as np

from services.common.schemas.search import SimilarityScale, Spread
from services.common.vocabulary import name_key, species_key
from services.search.index import VectorIndex
from services.search.lookup import RecordLookup
from services.search.metadata import Row
from services.search.nearest import NearestIndex

logger = logging.getLogger(__name__)

NEIGHBOURS = 50
# Fewer measured similarities than this in any of the three sets, and the scale is not reported: a
# handful of records says nothing a reader should rely on.
MIN_MEASURED = 20
SEED = 0
FETCH_CHUNK = 64  # rows per lookup while measuring: about what one search asks for


class ScaleUnavailable(RuntimeError):
    """The collection cannot be measured; the message says why (for the log)."""


@dataclass(frozen=True)
class StoredSample:
    ids: np.ndarray  # (n,) int64 record ids
    vectors: np.ndarray  # (n, d) float32, as the index decodes them


def _ivf_sample(index: faiss.Index, ivf: faiss.IndexIVF, count: int, rng: np.random.Generator) -> StoredSample:
    """Uniform entries of the inverted lists, as (list, offset) pairs, decoded in the IVF's space and mapped
    back through a pre-transform (OPQ, PCA) when the IVF is wrapped in one."""
    invlists = ivf.invlists
    sizes = np.fromiter((invlists.list_size(list_no) for list_no in range(ivf.nlist)), dtype=np.int64, count=ivf.nlist)
    total = int(sizes.sum())
    if total == 0:
        return StoredSample(np.zeros(0, np.int64), np.zeros((0, index.d), np.float32))
    positions = np.sort(rng.choice(total, size=min(count, total), replace=False))
    ends = np.cumsum(sizes)
    lists = np.searchsorted(ends, positions, side="right")
    offsets = positions - (ends[lists] - sizes[lists])
    ids = np.empty(len(positions), dtype=np.int64)
    decoded = np.empty((len(positions), ivf.d), dtype=np.float32)
    for row, (list_no, offset) in enumerate(zip(lists.tolist(), offsets.tolist(), strict=True)):
        ids[row] = invlists.get_single_id(list_no, offset)
        ivf.reconstruct_from_offset(list_no, offset, faiss.swig_ptr(decoded[row]))
    if isinstance(index, faiss.IndexPreTransform):
        vectors = np.empty((len(ids), index.d), dtype=np.float32)
        index.reverse_chain(len(ids), faiss.swig_ptr(decoded), faiss.swig_ptr(vectors))
        decoded = vectors
    return StoredSample(ids, decoded)


def _positional_sample(index: faiss.Index, count: int, rng: np.random.Generator) -> StoredSample:
    """Uniform positions of a flat or HNSW index, by `reconstruct`; through an IndexIDMap, its ids."""
    ids_of: np.ndarray | None = None
    inner = index
    if isinstance(index, faiss.IndexIDMap):
        ids_of = faiss.vector_to_array(index.id_map)
        inner = faiss.downcast_index(index.index)
    total = int(inner.ntotal)
    positions = np.sort(rng.choice(total, size=min(count, total), replace=False)) if total else np.zeros(0, np.int64)
    vectors = np.empty((len(positions), index.d), dtype=np.float32)
    for row, position in enumerate(positions.tolist()):
        vectors[row] = inner.reconstruct(position)
    ids = ids_of[positions] if ids_of is not None else positions.astype(np.int64)
    return StoredSample(ids.astype(np.int64), vectors)


def sample_stored(index: NearestIndex, count: int, seed: int = SEED) -> StoredSample:
    """Up to `count` stored vectors chosen uniformly among the index's entries, with their ids.

    Raises ScaleUnavailable for an index whose entries cannot be read back this way (another backend
    than FAISS; an IVF wrapped in anything but a pre-transform; an encoding that does not decode)."""
    if not isinstance(index, VectorIndex):
        raise ScaleUnavailable(
            f"stored vectors are sampled from a FAISS index only, not from the {index.backend} backend"
        )
    rng = np.random.default_rng(seed)
    top = faiss.downcast_index(index.index)
    try:
        if isinstance(top, faiss.IndexIVF):
            return _ivf_sample(top, top, count, rng)
        if isinstance(top, faiss.IndexPreTransform):
            inner = faiss.downcast_index(top.index)
            if isinstance(inner, faiss.IndexIVF):
                return _ivf_sample(top, inner, count, rng)
        try:
            faiss.extract_index_ivf(top)
        except RuntimeError:
            return _positional_sample(top, count, rng)
        raise ScaleUnavailable(f"a {type(top).__name__} around an IVF index cannot be sampled by list")
    except ScaleUnavailable:
        raise
    except RuntimeError as exc:
        raise ScaleUnavailable(f"the index's vectors cannot be read back: {exc}") from exc


def spread(values: list[float]) -> Spread:
    """Count and quantiles (numpy's linear interpolation), rounded to 4 places."""
    array = np.asarray(values, dtype=np.float64)
    p10, p25, median, p75, p90 = (round(float(q), 4) for q in np.quantile(array, [0.1, 0.25, 0.5, 0.75, 0.9]))
    return Spread(count=len(values), p10=p10, p25=p25, median=median, p75=p75, p90=p90)


def measure_scale(
    index: NearestIndex,
    lookup: RecordLookup,
    *,
    samples: int,
    nprobe: int,
    ef_search: int,
    neighbours: int = NEIGHBOURS,
    seed: int = SEED,
    stop: threading.Event | None = None,
) -> SimilarityScale:
    """The similarity scale of the collection (see the module doc). Raises ScaleUnavailable when the index
    cannot be sampled, too few sampled records know their species (MIN_MEASURED), the rows come from the
    DuckDB fallback, or `stop` is set (checked between lookups, so a shutdown does not wait it out)."""
    if lookup.name != "sidecar":
        # Without the sidecar each of the ~13,000 rows is a DuckDB lookup by id, and at full size those pin the
        # id index's nodes in DuckDB's memory for good (docs/benchmarks/scale.md): not worth a sentence.
        raise ScaleUnavailable("it is measured with the lookup sidecar only, not with DuckDB row lookups")
    started = time.perf_counter()

    def fetch(ids: list[int]) -> dict[int, Row]:
        rows: dict[int, Row] = {}
        for start in range(0, len(ids), FETCH_CHUNK):  # a search's worth at a time, so searches interleave
            if stop is not None and stop.is_set():
                raise ScaleUnavailable("the service is stopping")
            rows |= lookup.fetch(ids[start : start + FETCH_CHUNK])
        return rows

    sample = sample_stored(index, samples, seed)
    usable = np.isfinite(sample.vectors).all(axis=1) & (np.linalg.norm(sample.vectors, axis=1) > 0)
    ids, vectors = sample.ids[usable], sample.vectors[usable]
    rows = fetch(ids.tolist())
    species = [species_key(rows[i]) if i in rows else None for i in ids.tolist()]
    known = np.asarray([key is not None for key in species], dtype=bool)
    if int(known.sum()) < MIN_MEASURED:
        raise ScaleUnavailable(f"{int(known.sum())} of {len(ids)} sampled records name their species")
    ids, vectors = ids[known], vectors[known]
    species = [key for key in species if key is not None]
    genera = [name_key(rows[i]["genus"]) for i in ids.tolist()]
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    found = index.search(vectors, neighbours + 1, nprobe, ef_search)
    neighbour_rows = fetch(np.unique(found.ids[found.ids >= 0]).tolist())
    same: list[float] = []
    other_genus: list[float] = []
    for position, record_id in enumerate(ids.tolist()):
        got_same = got_other = False
        for neighbour, similarity in zip(
            found.ids[position].tolist(), found.similarities[position].tolist(), strict=True
        ):
            row = neighbour_rows.get(neighbour)
            if neighbour == record_id or row is None or not np.isfinite(similarity):
                continue
            key = species_key(row)
            if not got_same and key is not None and key == species[position]:
                same.append(similarity)
                got_same = True
            genus = row.get("genus")
            if not got_other and genus and name_key(genus) != genera[position]:
                other_genus.append(similarity)
                got_other = True
            if got_same and got_other:
                break

    # Every pair of sampled records of different genera: what unrelated photos score.
    pairs = vectors @ vectors.T
    genus_codes = np.unique(np.asarray(genera), return_inverse=True)[1]
    upper = np.triu(np.ones(pairs.shape, dtype=bool), k=1) & (genus_codes[:, None] != genus_codes[None, :])
    unrelated = pairs[upper].tolist()

    for name, values in (("same species", same), ("other genus", other_genus), ("other genera", unrelated)):
        if len(values) < MIN_MEASURED:
            raise ScaleUnavailable(f"only {len(values)} {name} similarities among {len(ids)} sampled records")
    scale = SimilarityScale(
        samples=len(ids),
        neighbours=neighbours,
        nprobe=found.nprobe,
        encoding=index.kind,
        same_species=spread(same),
        nearest_other_genus=spread(other_genus),
        other_genera=spread(unrelated),
    )
    logger.info(
        "similarity scale from %d records in %.1f s: same species median %.3f, other genera median %.3f",
        scale.samples, time.perf_counter() - started, scale.same_species.median, scale.other_genera.median,
    )  # fmt: skip
    return scale
