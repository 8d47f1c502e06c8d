"""The FAISS side of a search: open an index file (memory-mapped on request), find nearest ids, give vectors back.

Any FAISS index file works: Flat, IVF (Flat, PQ, SQ; wrapped or not), HNSW. Two things here are
about speed at TreeOfLife scale:

- An IVF index's coarse quantizer is, in the pre-built file, a flat list of 65,536 centroids of
  768 floats: every query reads all ~200 MB of them. `upgrade_quantizer` swaps in an HNSW graph
  over the same centroids, built once and cached, so an existing index gets faster without being
  rebuilt (the lists and codes are untouched; only which lists a query visits can differ).
- With `mmap`, the inverted lists (IVF) or the flat codes (Flat, HNSW) are mapped read-only from
  the file and paged in by the OS, so a 5.8 GB index does not sit in RAM beside its page cache.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from services.search.errors import NoDirectMap, NotReconstructable, UnknownRecord
from services.search.nearest import Backend, Neighbours, StoredVector

if TYPE_CHECKING:
    from services.search.filters import Criteria

logger = logging.getLogger(__name__)

CoarseQuantizer = Literal["auto", "flat", "hnsw"]
DirectMapMode = Literal["lazy", "startup", "off"]

# `auto` puts an HNSW graph over the centroids from this many lists up: below it a flat scan of the
# centroids costs less than a millisecond and the graph would only cost start-up time.
AUTO_HNSW_FROM_NLIST = 8192
# Encodings that give back exactly the vector that was added.
EXACT_KINDS = {"IndexFlat", "IndexFlatIP", "IndexFlatL2", "IndexIVFFlat", "IndexHNSWFlat", "IndexIVFFlatDedup"}
# fourcc of IVF files (and wrappers that may hold one): their lists are what IO_FLAG_MMAP maps.
_IVF_FOURCC = (b"Iw", b"Iv", b"IxPT", b"IxMp", b"IxM2", b"IRFl")


class IndexOpenError(RuntimeError):
    """The index file is missing or unreadable."""


def _read(path: Path, mmap: bool) -> faiss.Index:
    if not mmap:
        return faiss.read_index(str(path))
    with path.open("rb") as handle:
        fourcc = handle.read(4)
    ivf_like = fourcc.startswith(_IVF_FOURCC[:2]) or fourcc in _IVF_FOURCC[2:]
    # IVF: the lists are mapped (OnDiskInvertedLists). Others: the flat codes are mapped. Neither flag
    # works for the other kind, so try the likely one first and the other second.
    flags = [faiss.IO_FLAG_MMAP, faiss.IO_FLAG_MMAP_IFC]
    if not ivf_like:
        flags.reverse()
    last: RuntimeError | None = None
    for flag in flags:
        try:
            return faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as exc:
            last = exc
    logger.warning("%s cannot be memory-mapped (%s); reading it into RAM", path, last)
    return faiss.read_index(str(path))


def _fingerprint(centroids: np.ndarray, m: int, ef_construction: int, metric: int) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(centroids).tobytes())
    digest.update(f"{centroids.shape}:{m}:{ef_construction}:{metric}".encode())
    return digest.hexdigest()[:20]


def hnsw_over_centroids(
    ivf: faiss.IndexIVF, *, m: int, ef_construction: int, cache_dir: Path | None
) -> faiss.IndexHNSWFlat:
    """An HNSW graph over an IVF index's centroids, read from the cache when it was built before."""
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    cached = None
    if cache_dir is not None:
        cached = cache_dir / f"coarse-hnsw-{_fingerprint(centroids, m, ef_construction, ivf.metric_type)}.index"
        if cached.is_file():
            graph = faiss.read_index(str(cached))
            logger.info("coarse HNSW quantizer read from %s", cached)
            return graph
    started = time.perf_counter()
    graph = faiss.IndexHNSWFlat(ivf.d, m, ivf.metric_type)
    graph.hnsw.efConstruction = ef_construction
    graph.add(centroids)
    logger.info("coarse HNSW quantizer over %d centroids built in %.1f s", ivf.nlist, time.perf_counter() - started)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial")
            faiss.write_index(graph, str(partial))
            partial.replace(cached)
        except OSError as exc:
            logger.warning("could not cache the coarse HNSW quantizer at %s: %s", cached, exc)
    return graph


class VectorIndex:
    """A FAISS index, safe to search from several threads at once (the `faiss` NearestIndex)."""

    backend: Backend = "faiss"
    filters_in_search = False  # FAISS judges no metadata: the engine screens what it returns

    def __init__(self, index: faiss.Index, path: Path, *, direct_map: DirectMapMode = "lazy") -> None:
        self.index = index
        self.path = path
        self.direct_map_mode = direct_map
        try:
            self._ivf: faiss.IndexIVF | None = faiss.extract_index_ivf(index)
        except RuntimeError:
            self._ivf = None
        self._hnsw = faiss.downcast_index(index) if isinstance(faiss.downcast_index(index), faiss.IndexHNSW) else None
        # Per-call parameters reach the IVF (and its quantizer) when the IVF is the top-level index;
        # a wrapped IVF reads only its own attributes, so those calls take turns.
        self._params_work = self._ivf is not None and self._ivf is index
        self._lock = threading.Lock()
        self._graph: faiss.IndexHNSWFlat | None = None
        self._mapped = False
        if self._ivf is not None and direct_map == "startup":
            self._ensure_direct_map()

    @classmethod
    def open(cls, path: Path, *, mmap: bool, direct_map: DirectMapMode = "lazy") -> VectorIndex:
        if not path.is_file():
            raise IndexOpenError(f"no FAISS index at {path}")
        try:
            index = _read(path, mmap)
        except RuntimeError as exc:
            raise IndexOpenError(f"could not read the FAISS index at {path}: {exc}") from exc
        logger.info("opened %s: %s, %d vectors, dim %d", path, type(index).__name__, index.ntotal, index.d)
        return cls(index, path, direct_map=direct_map)

    def upgrade_quantizer(
        self, mode: CoarseQuantizer, *, m: int = 32, ef_construction: int = 40, cache_dir: Path | None = None
    ) -> None:
        """Search the IVF's centroids through an HNSW graph instead of a flat scan (see the module doc)."""
        ivf = self._ivf
        if ivf is None or mode == "flat":
            return
        if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            return  # already a graph (or another quantizer the index was built with): leave it
        if mode == "auto" and ivf.nlist < AUTO_HNSW_FROM_NLIST:
            return
        graph = hnsw_over_centroids(ivf, m=m, ef_construction=ef_construction, cache_dir=cache_dir)
        old = ivf.quantizer
        # The IVF must not free the graph (Python owns it); the flat centroids become Python's to free.
        owned = ivf.own_fields
        ivf.own_fields = False
        ivf.quantizer = graph
        if owned:
            old.thisown = True
        self._graph = graph

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
        """The FAISS class, of the IVF inside when wrapped."""
        return type(faiss.downcast_index(self._ivf if self._ivf is not None else self.index)).__name__

    @property
    def metric(self) -> str:
        return "inner_product" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"

    @property
    def coarse_quantizer(self) -> str | None:
        if self._ivf is None:
            return None
        return "hnsw" if isinstance(faiss.downcast_index(self._ivf.quantizer), faiss.IndexHNSW) else "flat"

    @property
    def is_hnsw(self) -> bool:
        return self._hnsw is not None

    @property
    def reconstructs(self) -> bool:
        return not (self._ivf is not None and self.direct_map_mode == "off" and not self._mapped)

    def clamp_nprobe(self, nprobe: int) -> int | None:
        return None if self.nlist is None else max(1, min(nprobe, self.nlist))

    def search(
        self, queries: np.ndarray, k: int, nprobe: int, ef_search: int, criteria: Criteria | None = None
    ) -> Neighbours:
        """The k nearest of each (normalised) query; ef_search drives HNSW (an HNSW index or quantizer).

        `criteria` is not applied here (filters_in_search is False): the engine screens the neighbours."""
        k = max(1, min(k, self.size)) if self.size else 1
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        used = self.clamp_nprobe(nprobe)
        ef: int | None = None
        if self._ivf is None:
            if self._hnsw is not None:
                ef = max(ef_search, k)
                similarities, ids = self.index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=ef))
            else:
                similarities, ids = self.index.search(queries, k)
        else:
            assert used is not None
            graph = self.coarse_quantizer == "hnsw"
            # The graph must return nprobe lists, so it explores at least that many.
            ef = max(ef_search, used) if graph else None
            if self._params_work:
                quantizer_params = faiss.SearchParametersHNSW(efSearch=ef) if ef is not None else None
                params = faiss.SearchParametersIVF(nprobe=used)
                if quantizer_params is not None:
                    params.quantizer_params = quantizer_params
                similarities, ids = self.index.search(queries, k, params=params)
                del quantizer_params  # kept alive until the search is done
            else:
                with self._lock:
                    self._ivf.nprobe = used
                    if ef is not None:
                        faiss.downcast_index(self._ivf.quantizer).hnsw.efSearch = ef
                    similarities, ids = self.index.search(queries, k)
        if self.index.metric_type != faiss.METRIC_INNER_PRODUCT:
            # Squared L2 between unit vectors: |a - b|^2 = 2 - 2 cos.
            similarities = np.where(ids >= 0, 1.0 - similarities / 2.0, similarities).astype(np.float32)
        return Neighbours(similarities=similarities, ids=ids, nprobe=used, ef_search=ef)

    def close(self) -> None:
        """Nothing to let go of: the index is freed with this object (a memory map with it)."""

    def _ensure_direct_map(self) -> None:
        ivf = self._ivf
        assert ivf is not None
        with self._lock:
            if self._mapped:
                return
            started = time.perf_counter()
            try:
                ivf.make_direct_map()
            except RuntimeError:
                # Ids that are not 0..ntotal-1 need a hash table rather than an array.
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            self._mapped = True
            logger.info("direct map of %d vectors made in %.1f s", ivf.ntotal, time.perf_counter() - started)

    def reconstruct(self, record_id: int) -> StoredVector:
        """The stored vector of an id: exact for flat encodings, the decoded approximation for PQ/SQ."""
        unknown = UnknownRecord(f"the index holds no vector with id {record_id}")
        if record_id < 0:
            raise unknown
        if self._ivf is not None:
            if not self._mapped:
                if self.direct_map_mode == "off":
                    raise NoDirectMap(
                        "this IVF index keeps no id -> list map (turned off); vectors cannot be read back"
                    )
                self._ensure_direct_map()
        elif record_id >= self.size and not isinstance(self.index, faiss.IndexIDMap):
            raise unknown
        try:
            vector = self.index.reconstruct(int(record_id))
        except RuntimeError as exc:
            text = str(exc)
            if "not implemented" in text or "not supported" in text:
                raise NotReconstructable(f"a {self.kind} index cannot give its vectors back") from exc
            raise unknown from exc
        return StoredVector(
            id=int(record_id), vector=np.asarray(vector, dtype=np.float32), exact=self.kind in EXACT_KINDS,
            encoding=self.kind,
        )  # fmt: skip
