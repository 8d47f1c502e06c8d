"""Load a collection into Milvus, for the search service's `milvus` backend (SEARCH_BACKEND=milvus).

    python -m collection milvus-load --data data --uri data/milvus/collection.db     # milvus-lite
    python -m collection milvus-load --data data --uri http://milvus:19530           # a Milvus server

One entity per vector: its id (the FAISS id = the metadata's `id`), the vector, and the scalar fields
the search filters on (services/search/milvus.py: a BOOL per scope, an INT64 name-key code per filter
rank), made from the collection's lookup sidecar (`python -m collection sidecar` makes one for any
metadata file). The hits' rows are not copied: the search reads them from the sidecar or DuckDB.

Where the vectors come from:

- the builder's own vectors (`python -m collection build ... --milvus URI`): the exact ones;
- the FAISS index file: each vector as the index gives it back. For a flat or IVF-Flat index that
  is the vector itself; for the pre-built IVF-PQ file (whose original vectors are not published) it
  is the PQ code decoded: an approximation, ~0.9 cosine to the original at 16 bytes a vector. Milvus
  then searches those reconstructions exactly (or nearly, by its index), so its results match the
  FAISS file's ranking, not the originals': recall is measured against exact search over the
  reconstructions, and the collection says `exact: false` (GET /v1/records/{id}/vector too).

A vector that is NaN, infinite or all zeros has no direction and is not loaded (FAISS never makes it a hit).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from services.common.vocabulary import FILTER_RANKS, SCOPE_TABLE
from services.search.index import EXACT_KINDS
from services.search.lookup import BINOMIAL, NO_TAXON, LookupSidecar, SidecarError, default_sidecar_path
from services.search.milvus import (
    BINOMIAL_FIELD,
    ID_FIELD,
    INFO_PROPERTY,
    SCOPE_FIELDS,
    TAXON_FIELDS,
    VECTOR_FIELD,
    CollectionInfo,
    MilvusOpenError,
    connect,
    taxon_code,
)
from services.search.settings import INDEX_FILE, METADATA_FILE, MILVUS_COLLECTION, MILVUS_LITE_FILE

logger = logging.getLogger(__name__)

BATCH = 2_000  # entities per insert: ~6 MB of 768-d vectors, well inside gRPC's 64 MB message limit
# The index type, chosen by measurement (docs/benchmarks/milvus.md, 30,000 vectors on milvus-lite): IVF_FLAT
# built in 21 s where HNSW took 100 s, with recall@10 1.000 against 0.996 and the same p99; and the engine
# widens its nprobe as it does FAISS's. HNSW (`--index-type HNSW`) is the usual choice on a Milvus server.
DEFAULT_INDEX = "IVF_FLAT"
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "HNSW": {"M": 16, "efConstruction": 128},
    "HNSW_SQ": {"M": 16, "efConstruction": 128, "sq_type": "SQ8"},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "IVF_PQ": {"nlist": 1024, "m": 16, "nbits": 8},
    "FLAT": {},
}


Batches = Iterator[tuple[np.ndarray, np.ndarray]]  # (ids, vectors) at a time


class LoadError(RuntimeError):
    """The collection cannot be loaded as asked (no sidecar, vectors that cannot be read back, a bad option)."""


def _index_ids(index: faiss.Index) -> np.ndarray:
    """Every id the index holds, in storage order."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        lists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
            for number in range(ivf.nlist)
            if lists.list_size(number)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    if isinstance(index, faiss.IndexIDMap):
        raise LoadError("an IndexIDMap cannot give its vectors back by id; give the vectors (--vectors)")
    return np.arange(index.ntotal, dtype=np.int64)


def index_vectors(path: Path, batch: int = BATCH) -> tuple[str, bool, int, int, Batches]:
    """(encoding, exact, count, dim, batches of (ids, vectors)) read back from a FAISS index file."""
    index = faiss.read_index(str(path))
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    kind = type(faiss.downcast_index(ivf if ivf is not None else index)).__name__
    ids = _index_ids(index)
    if ivf is not None:
        try:
            ivf.make_direct_map()
        except RuntimeError:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # ids that are not 0..ntotal-1

    def batches() -> Batches:
        ordered = np.sort(ids)
        for start in range(0, len(ordered), batch):
            chunk = ordered[start : start + batch]
            try:
                vectors = index.reconstruct_batch(chunk)
            except RuntimeError as exc:
                raise LoadError(f"a {kind} index cannot give its vectors back: {exc}") from exc
            yield chunk, np.asarray(vectors, dtype=np.float32)

    return kind, kind in EXACT_KINDS, len(ids), int(index.d), batches()


def array_vectors(vectors: np.ndarray, batch: int = BATCH) -> Batches:
    """Batches of (ids, vectors) of one vector per id 0..n-1 (the builder's order), L2-normalised as indexed."""
    for start in range(0, len(vectors), batch):
        chunk = np.asarray(vectors[start : start + batch], dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            chunk = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        yield np.arange(start, start + len(chunk), dtype=np.int64), chunk


class ScalarFields:
    """The scope and taxon fields of any ids, from the sidecar: flags per id, name-key codes per taxon."""

    def __init__(self, sidecar: LookupSidecar) -> None:
        self.sidecar = sidecar
        self.rules = [rule for rule in SCOPE_TABLE if rule.name in SCOPE_FIELDS]
        ranks = {TAXON_FIELDS[rank]: rank for rank in FILTER_RANKS} | {BINOMIAL_FIELD: BINOMIAL}
        self.codes: dict[str, np.ndarray] = {}
        for name, rank in ranks.items():
            keys, indices = sidecar.name_keys(rank)
            coded = np.asarray([taxon_code(key) for key in keys], dtype=np.int64)
            self.codes[name] = np.where(indices >= 0, coded[np.maximum(indices, 0)] if len(coded) else 0, 0)

    def of(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        flags = self.sidecar.flags_of(ids)
        taxa = self.sidecar.codes_of(ids)
        known = taxa != NO_TAXON
        safe = np.where(known, taxa, 0).astype(np.int64)
        fields = {SCOPE_FIELDS[rule.name]: (flags & rule.bit) != 0 for rule in self.rules}
        for name, codes in self.codes.items():
            fields[name] = np.where(known, codes[safe] if len(codes) else 0, 0)
        return fields


def _schema(client: Any, dim: int, info: CollectionInfo) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False, description=info.to_json())
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    for name in SCOPE_FIELDS.values():
        schema.add_field(name, DataType.BOOL)
    for name in [*TAXON_FIELDS.values(), BINOMIAL_FIELD]:
        schema.add_field(name, DataType.INT64)
    return schema


def load_collection(
    *,
    metadata: Path,
    uri: str,
    collection: str = MILVUS_COLLECTION,
    index: Path | None = None,
    vectors: np.ndarray | None = None,
    sidecar: Path | None = None,
    index_type: str = DEFAULT_INDEX,
    index_params: dict[str, Any] | None = None,
    token: str | None = None,
    batch: int = BATCH,
) -> dict[str, Any]:
    """Create (or replace) the Milvus collection from `vectors` (exact, id = row) or the FAISS `index` file.

    Returns a summary with the seconds each phase took. Raises LoadError, SidecarError, MilvusOpenError."""
    from pymilvus.exceptions import MilvusException

    started = time.perf_counter()
    index_type = index_type.upper()
    params = {**DEFAULT_PARAMS.get(index_type, {}), **(index_params or {})}
    folder = sidecar or default_sidecar_path(metadata)
    if not (folder / "manifest.json").is_file():
        raise LoadError(f"no lookup sidecar at {folder}; make one with `python -m collection sidecar`")
    side = LookupSidecar(folder)
    if side.manifest.get("source", {}).get("size") != metadata.stat().st_size:
        raise SidecarError(f"the sidecar at {folder} was made from another metadata file; make it again")
    fields = ScalarFields(side)
    if vectors is not None:
        source, exact, count, dim, batches = (
            "vectors",
            True,
            len(vectors),
            int(vectors.shape[1]),
            array_vectors(vectors),
        )
    elif index is not None:
        source, exact, count, dim, batches = index_vectors(index, batch)
    else:
        raise LoadError("give the vectors or the FAISS index file to load them from")
    if "nlist" in params and count:
        # k-means wants ~39 points a list: a small collection gets fewer lists (and the stats say how many).
        params["nlist"] = max(1, min(int(params["nlist"]), count // 39))
    info = CollectionInfo(
        source=source, exact=exact, index_params={"index_type": index_type, "metric_type": "IP", **params},
        metadata={"name": metadata.name, "size": metadata.stat().st_size, "rows": side.rows},
    )  # fmt: skip
    client = connect(uri, token=token)
    timings: dict[str, float] = {}
    loaded = skipped = 0
    try:
        if client.has_collection(collection):
            logger.info("replacing the Milvus collection %s", collection)
            client.drop_collection(collection)
        client.create_collection(
            collection, schema=_schema(client, dim, info), properties={INFO_PROPERTY: info.to_json()}
        )
        tick = time.perf_counter()
        for ids, chunk in batches:
            usable = np.all(np.isfinite(chunk), axis=1) & np.any(chunk != 0, axis=1)
            skipped += int((~usable).sum())
            ids, chunk = ids[usable], chunk[usable]
            if not len(ids):
                continue
            scalars = fields.of(ids)
            columns = {name: values.tolist() for name, values in scalars.items()}
            rows = [
                {ID_FIELD: record_id, VECTOR_FIELD: vector, **{name: values[i] for name, values in columns.items()}}
                for i, (record_id, vector) in enumerate(zip(ids.tolist(), chunk, strict=True))
            ]
            client.insert(collection, rows)
            loaded += len(rows)
            if loaded % (50 * batch) < len(rows):
                logger.info("inserted %d of %d vectors", loaded, count)
        client.flush(collection)
        timings["insert_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        vector_index = client.prepare_index_params()
        # pymilvus sends each build parameter as its own key, which Milvus servers read; milvus-lite reads only
        # the JSON `params` key (the older form, which servers still accept) and would otherwise build its
        # defaults (IVF: 128 lists, where the service would probe only the `nlist` it was told). Send both.
        vector_index.add_index(
            VECTOR_FIELD, index_type=index_type, metric_type="IP", params={**params, "params": dict(params)}
        )
        client.create_index(collection, vector_index)
        timings["index_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        client.load_collection(collection)
        timings["load_s"] = time.perf_counter() - tick
    except MilvusException as exc:
        raise MilvusOpenError(f"Milvus refused the load into {collection!r} at {uri}: {exc}") from exc
    finally:
        client.close()
    if skipped:
        logger.warning("%d vectors without a direction (NaN, infinite or zero) were not loaded", skipped)
    return {
        "collection": collection, "uri": uri, "vectors": loaded, "skipped": skipped, "dim": dim, "source": source,
        "exact": exact, "index_type": index_type, "index_params": params,
        "seconds": round(time.perf_counter() - started, 1), **{k: round(v, 1) for k, v in timings.items()},
    }  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data"), help="collection folder (faiss/, duckdb/)")
    parser.add_argument("--uri", help=f"Milvus server URL or milvus-lite .db path; default DATA/{MILVUS_LITE_FILE}")
    parser.add_argument("--collection", default=MILVUS_COLLECTION, help="Milvus collection name")
    parser.add_argument("--index-file", type=Path, help=f"FAISS index to read vectors from; default DATA/{INDEX_FILE}")
    parser.add_argument("--vectors", type=Path, help="exact vectors (.npy, row i = id i) instead of the index's")
    parser.add_argument("--metadata", type=Path, help=f"default DATA/{METADATA_FILE}")
    parser.add_argument("--index-type", default=DEFAULT_INDEX, choices=sorted(DEFAULT_PARAMS), help="Milvus index")
    parser.add_argument("--index-params", default="{}", help="JSON, e.g. '{\"M\": 32}' (merged over the defaults)")
    parser.add_argument("--token", help="a Milvus server's credentials (user:password or an API key)")


def run(args: argparse.Namespace) -> int:
    """Load; a failure is a message on stderr and exit status 1."""
    metadata = args.metadata or args.data / METADATA_FILE
    try:
        params = json.loads(args.index_params)
        if not isinstance(params, dict):
            raise LoadError("--index-params must be a JSON object")
        summary = load_collection(
            metadata=metadata, uri=args.uri or str(args.data / MILVUS_LITE_FILE), collection=args.collection,
            index=None if args.vectors else args.index_file or args.data / INDEX_FILE,
            vectors=np.load(args.vectors, mmap_mode="r") if args.vectors else None,
            index_type=args.index_type, index_params=params, token=args.token,
        )  # fmt: skip
    except (LoadError, SidecarError, MilvusOpenError, OSError, ValueError) as exc:
        print(f"milvus-load failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
