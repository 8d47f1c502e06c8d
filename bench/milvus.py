"""FAISS (the pre-built IVF-PQ layout) against Milvus-lite, side by side on one synthetic collection.

    make bench-milvus [VECTORS=100000]      # results: var/bench/milvus/results.json, docs/benchmarks/milvus.md

The collection is bench/search_data.py's generator at VECTORS (clustered 768-d points, IVF-PQ16, one
metadata row per vector). Milvus is loaded the way `python -m collection milvus-load` loads the pre-built
file: the PQ codes decoded (the originals are not published). Each side runs in its own process, so
its memory (RSS) is its own. Measured per side: build/load time, RSS, p50/p99 of a whole engine search
(index + screen + rows, top_n 10, one query at a time) unfiltered and in the `url_only` scope, and
recall@10 against exact inner-product search over the original vectors and over the PQ reconstructions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psutil

from bench.search_data import BenchData, Shape, ensure_index, ensure_metadata
from services.search.engine import Limits, Query, SearchEngine
from services.search.lookup import open_lookup
from services.search.metadata import MetadataStore
from services.search.nearest import NearestIndex

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "var" / "bench" / "milvus"
LIMITS = Limits(max_candidates=10_000, max_nprobe=1024, max_rounds=8, overfetch=4.0, default_ef_search=64)
TOP_N = 10


def shape(vectors: int) -> Shape:
    # About 4 sqrt(n) lists (FAISS's rule of thumb), PQ16 as the pre-built file has; one metadata row per vector.
    nlist = 2 ** round(math.log2(4 * math.sqrt(vectors)))
    return Shape(vectors=vectors, nlist=nlist, pq_m=16, rows=vectors, queries=200)


def _rss_mb() -> dict[str, float]:
    return {
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = [len(set(f[:TOP_N]) & set(t[:TOP_N].tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / TOP_N


def _latencies(engine: SearchEngine, queries: np.ndarray, scope: str, nprobe: int) -> tuple[dict[str, float], list]:
    times, found = [], []
    for query in queries:
        tick = time.perf_counter()
        outcome = engine.search(Query(vectors=query[None], top_n=TOP_N, nprobe=nprobe, scope=scope))
        times.append((time.perf_counter() - tick) * 1000)
        found.append([hit.row["id"] for hit in outcome.results[0].hits])
    ms = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}, found


def reconstructed_truth(data: BenchData) -> np.ndarray:
    """Exact top-10 by inner product over the index's decoded vectors (what Milvus holds)."""
    path = data.folder / f"truth_reconstructed_{data.shape.vectors}.npy"
    if path.is_file():
        return np.load(path)
    index = faiss.read_index(str(data.index))
    faiss.extract_index_ivf(index).make_direct_map()
    flat = faiss.IndexFlatIP(index.d)
    flat.add(index.reconstruct_n(0, index.ntotal))
    _, ids = flat.search(np.load(data.queries), TOP_N)
    np.save(path, ids)
    return ids


def measure(side: str, vectors: int, index_type: str) -> dict[str, Any]:
    """One side, in this process."""
    faiss.omp_set_num_threads(1)
    data = BenchData(FOLDER, shape(vectors))
    queries = np.load(data.queries)
    truths = {"original": np.load(data.truth), "reconstructed": reconstructed_truth(data)}
    metadata = MetadataStore(data.metadata("id"), threads=1)
    lookup = open_lookup(metadata, sidecar=data.sidecar("id"))
    before = _rss_mb()
    out: dict[str, Any] = {"side": side, "vectors": vectors, "rss_before_open_mb": before["rss_mb"]}
    tick = time.perf_counter()
    index: NearestIndex
    if side == "faiss":
        from services.search.index import VectorIndex

        index = VectorIndex.open(data.index, mmap=False)
        index.upgrade_quantizer("flat")
        nprobe = 16
    else:
        from collection.milvus_load import load_collection
        from services.search.milvus import MilvusIndex

        uri = str(FOLDER / f"milvus_{vectors}_{index_type.lower()}.db")
        name = "bench"
        if not Path(uri).exists():
            out["milvus_load"] = load_collection(
                metadata=data.metadata("id"), uri=uri, collection=name, index=data.index, index_type=index_type
            )
        tick = time.perf_counter()
        index = MilvusIndex.open(uri, name, metadata=data.metadata("id"), rows=metadata.rows)
        nprobe = 16
    out["open_s"] = round(time.perf_counter() - tick, 2)
    out["kind"] = index.kind
    engine = SearchEngine(index, lookup, LIMITS)
    _latencies(engine, queries[:10], "all", nprobe)  # warm up
    out |= _rss_mb()
    for scope in ("all", "url_only"):
        figures, found = _latencies(engine, queries, scope, nprobe)
        out[scope] = figures
        if scope == "all":
            out["recall_at_10"] = {name: round(_recall(found, truth), 3) for name, truth in truths.items()}
    out |= {"rss_after_mb": _rss_mb()["rss_mb"], "peak_rss_mb": _rss_mb()["peak_rss_mb"]}
    index.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--index-type", default="HNSW", help="the Milvus index type")
    parser.add_argument("--side", choices=["faiss", "milvus"], help="measure one side in this process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.side:
        print(json.dumps(measure(args.side, args.vectors, args.index_type)))
        return 0
    data = BenchData(FOLDER, shape(args.vectors))
    tick = time.perf_counter()
    ensure_index(data)  # the IVF-PQ file, queries and exact truth (the generator's time is in it)
    made = round(time.perf_counter() - tick, 1)
    ensure_metadata(data, "id")
    results: dict[str, Any] = {"vectors": args.vectors, "shape": vars(data.shape), "faiss_build_s": made}
    for side in ("faiss", "milvus"):
        command = [sys.executable, "-m", "bench.milvus", "--side", side, "--vectors", str(args.vectors)]
        command += ["--index-type", args.index_type]
        done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
        logger.info("%s: %s", side, results[side])
    (FOLDER / f"results_{args.vectors}_{args.index_type.lower()}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
