"""Search benchmark on a synthetic TreeOfLife-shaped collection (see bench/search_data.py).

    make bench-search                                   # = .venv/bin/python -m bench.search
    flock /tmp/bench.lock .venv/bin/python -m bench.search --out var/bench/search

Measures, in one run: single-query latency (p50/p95) and recall@10 at nprobe 1, 16, 64 with the
flat and the HNSW coarse quantizer; metadata lookups of 30 and 300 ids by each access path; the
fill rate of a scope matching ~10% of rows at top_n 10 and 50; and search + metadata at top_n 10,
nprobe 16, against the original design (flat quantizer, then one `WHERE id IN (...)` on the
taxonomy-sorted table), the two interleaved query by query. Prints Markdown and writes results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np

from bench.search_data import BENCH_DIR, BenchData, Shape, ensure_index, ensure_metadata
from services.search.engine import Limits, Query, SearchEngine
from services.search.filters import Criteria
from services.search.index import VectorIndex
from services.search.lookup import RecordLookup, SidecarLookup, open_lookup
from services.search.metadata import MetadataStore
from services.search.settings import SearchSettings

logger = logging.getLogger("bench.search")

NPROBES = (1, 16, 64)
SCOPE = "inaturalist"  # ~10% of the synthetic rows


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "mean": round(statistics.fmean(ordered), 3),
        "n": len(ordered),
    }


def _timed(call: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call(*args)
    return (time.perf_counter() - started) * 1000, result


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "duckdb": duckdb.__version__,
        "numpy": np.__version__,
        "load_average_at_start": os.getloadavg(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def bench_index(data: BenchData, queries: np.ndarray, truth: np.ndarray) -> tuple[dict[str, Any], VectorIndex]:
    """Latency and recall@10 per quantizer and nprobe; returns the figures and the HNSW-upgraded index."""
    out: dict[str, Any] = {}
    rss = _rss_mb()
    load_ms, flat = _timed(lambda: VectorIndex.open(data.index, mmap=False))
    out["open_in_ram"] = {"ms": round(load_ms, 1), "rss_added_mb": round(_rss_mb() - rss, 1)}
    rss = _rss_mb()
    load_ms, hnsw = _timed(lambda: VectorIndex.open(data.index, mmap=True))
    out["open_mmap"] = {"ms": round(load_ms, 1), "rss_added_mb": round(_rss_mb() - rss, 1)}
    cached = data.quantizer_cache.is_dir() and any(data.quantizer_cache.iterdir())
    build_ms, _ = _timed(lambda: hnsw.upgrade_quantizer("hnsw", cache_dir=data.quantizer_cache))
    out["hnsw_quantizer"] = {"ms": round(build_ms, 1), "from_cache": cached, "m": 32, "ef_construction": 40}
    top10 = truth[:, :10]
    for name, index in (("flat", flat), ("hnsw", hnsw)):
        for nprobe in NPROBES:
            times, found = [], []
            for q in queries:
                elapsed, neighbours = _timed(index.search, q[None, :], 10, nprobe, 64)
                times.append(elapsed)
                found.append(neighbours.ids[0])
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, top10, strict=True)]))
            out[f"{name}_nprobe{nprobe}"] = {"latency_ms": _ms(times), "recall_at_10": round(recall, 3)}
            out[f"{name}_nprobe{nprobe}"]["_ids"] = [f.tolist() for f in found]
    for nprobe in NPROBES:
        same = np.mean(
            [
                len(set(a) & set(b)) / 10
                for a, b in zip(out[f"flat_nprobe{nprobe}"]["_ids"], out[f"hnsw_nprobe{nprobe}"]["_ids"], strict=True)
            ]
        )
        out[f"hnsw_nprobe{nprobe}"]["same_top10_as_flat"] = round(float(same), 3)
    for key in list(out):
        if isinstance(out[key], dict):
            out[key].pop("_ids", None)
    del flat
    gc.collect()
    return out, hnsw


def _lookups(
    store: RecordLookup | Callable[[list[int]], Any], ids_pool: np.ndarray, count: int, reps: int, warm: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    fetch = store if callable(store) else store.fetch
    cold = []
    for _ in range(min(warm, 10)):
        cold.append(_timed(fetch, rng.choice(ids_pool, count, replace=False).tolist())[0])
    for _ in range(max(0, warm - 10)):
        fetch(rng.choice(ids_pool, count, replace=False).tolist())
    times = []
    for _ in range(reps):
        ids = rng.choice(ids_pool, count, replace=False).tolist()
        elapsed, rows = _timed(fetch, ids)
        assert len(rows) == len(set(ids)), (len(rows), len(ids))
        times.append(elapsed)
    return {"first_10_ms_median": round(statistics.median(cold), 3) if cold else None, "warm": _ms(times)}


def bench_metadata(data: BenchData, ids_pool: np.ndarray, reps: int, warm: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for order in ("taxonomy", "id"):
        path = data.metadata(order)
        for label, use_sidecar in (("duckdb_rows", False), ("sidecar", True)):
            store = open_lookup(MetadataStore(path), use_sidecar=use_sidecar)
            key = f"{order}_sorted_{label}"
            out[key] = {"lookup": store.name}
            for count in (30, 300):
                out[key][f"ids_{count}"] = _lookups(store, ids_pool, count, reps, warm, seed=count)
            out[key]["index_scan"] = "Index Scan" in store.fetch_plan(ids_pool[:30].tolist())
            if isinstance(store, SidecarLookup):
                # Judging candidates: what a scoped search does with every neighbour it examines.
                rng = np.random.default_rng(1)
                criteria = Criteria(SCOPE)
                for count in (300, 3000):
                    times = [_timed(store.screen, rng.choice(ids_pool, count), criteria)[0] for _ in range(reps)]
                    out[key][f"screen_{count}"] = _ms(times)
            store.store.close()
            gc.collect()
    # The original system's mistake: a scope condition in the same WHERE as the id list.
    path = data.metadata("taxonomy")
    con = duckdb.connect(str(path), read_only=True, config={"threads": 2})
    rng = np.random.default_rng(7)
    times = []
    for _ in range(3):
        ids = rng.choice(ids_pool, 30, replace=False).tolist()
        literal = ", ".join(str(i) for i in ids)
        sql = f"SELECT * FROM metadata WHERE id IN ({literal}) AND has_url"
        times.append(_timed(lambda sql=sql: con.execute(sql).fetchall())[0])
    con.close()
    out["taxonomy_sorted_in_and_has_url_30"] = _ms(times)
    return out


def bench_fill(engine: SearchEngine, queries: np.ndarray, limits: Limits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, bound in (("widening", limits), ("no_nprobe_widening", dataclasses.replace(limits, max_nprobe=16))):
        engine.limits = bound
        for top_n in (10, 50):
            filled, hits, rounds, candidates, nprobes, times, stops = 0, [], [], [], [], [], {}
            for q in queries:
                query = Query(vectors=q[None, :], top_n=top_n, nprobe=16, scope=SCOPE)
                elapsed, outcome = _timed(engine.search, query)
                result = outcome.results[0]
                filled += len(result.hits) == top_n
                hits.append(len(result.hits) / top_n)
                rounds.append(result.rounds)
                candidates.append(result.candidates)
                nprobes.append(result.nprobe)
                stops[result.stopped] = stops.get(result.stopped, 0) + 1
                times.append(elapsed)
            out[f"{label}_top{top_n}"] = {
                "filled_fraction": round(filled / len(queries), 3),
                "mean_hits_over_top_n": round(float(np.mean(hits)), 3),
                "mean_rounds": round(float(np.mean(rounds)), 2),
                "mean_candidates": round(float(np.mean(candidates)), 1),
                "nprobe_final": {str(k): int(v) for k, v in zip(*np.unique(nprobes, return_counts=True), strict=True)},
                "stopped": stops,
                "latency_ms": _ms(times),
            }
    engine.limits = limits
    return out


def bench_target(
    data: BenchData, hnsw: VectorIndex, queries: np.ndarray, rounds: int
) -> tuple[dict[str, Any], SearchEngine]:
    """top_n 10, nprobe 16, scope all: the original design and ours, interleaved query by query."""
    flat = VectorIndex.open(data.index, mmap=False)
    original_store = MetadataStore(data.metadata("taxonomy"))
    ours = SearchEngine(hnsw, open_lookup(MetadataStore(data.metadata("taxonomy"))), SearchSettings().limits())

    def original(q: np.ndarray) -> dict[int, Any]:
        found = flat.search(q[None, :], 10, 16, 64)
        return original_store.fetch(found.ids[0].tolist())

    def mine(q: np.ndarray) -> Any:
        return ours.search(Query(vectors=q[None, :], top_n=10, nprobe=16))

    for q in queries[:20]:  # warm both: DuckDB's block cache, the page cache
        original(q)
        mine(q)
    times: dict[str, list[float]] = {"original": [], "ours": []}
    stages: dict[str, list[float]] = {"index_ms": [], "screen_ms": [], "fetch_ms": []}
    for _ in range(rounds):
        for q in queries:
            times["original"].append(_timed(original, q)[0])
            elapsed, outcome = _timed(mine, q)
            times["ours"].append(elapsed)
            for stage in stages:
                stages[stage].append(getattr(outcome.timings, stage))
    original_ms, ours_ms = _ms(times["original"]), _ms(times["ours"])
    out = {
        "original_flat_plus_id_in": original_ms,
        "ours_hnsw_plus_sidecar": ours_ms,
        "ours_stage_p50_ms": {stage: round(statistics.median(values), 3) for stage, values in stages.items()},
        "ratio_p50": round(ours_ms["p50"] / original_ms["p50"], 3),
        "ratio_mean": round(ours_ms["mean"] / original_ms["mean"], 3),
        "target_ratio": 0.2,
    }
    original_store.close()
    return out, ours


def report(results: dict[str, Any]) -> str:
    lines = ["## Search latency and recall@10 (single queries, top 10)", ""]
    lines += ["| quantizer | nprobe | p50 ms | p95 ms | recall@10 | same top 10 as flat |", "|---|---|---|---|---|---|"]
    index = results["index"]
    for name in ("flat", "hnsw"):
        for nprobe in NPROBES:
            row = index[f"{name}_nprobe{nprobe}"]
            same = row.get("same_top10_as_flat", "")
            lines.append(
                f"| {name} | {nprobe} | {row['latency_ms']['p50']} | {row['latency_ms']['p95']} | "
                f"{row['recall_at_10']} | {same} |"
            )
    lines += ["", "## Metadata lookups (warm, ms)", "", "| layout / path | 30 ids p50 | 30 ids p95 | 300 ids p50 | "
              "300 ids p95 | first 10 lookups (30 ids) | index scan |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    meta = results["metadata"]
    for key, row in meta.items():
        if not key.endswith(("duckdb_rows", "sidecar")):
            continue
        a, b = row["ids_30"], row["ids_300"]
        lines.append(
            f"| {key} | {a['warm']['p50']} | {a['warm']['p95']} | {b['warm']['p50']} | {b['warm']['p95']} | "
            f"{a['first_10_ms_median']} | {row['index_scan']} |"
        )
    scan = meta["taxonomy_sorted_in_and_has_url_30"]["p50"]
    lines.append(f"| taxonomy sorted, `id IN (30 ids) AND has_url` | {scan} | | | | | False |")
    fill = results["fill"]
    lines += ["", f"## Fill rate, scope `{SCOPE}` (~10% of rows), nprobe 16 to start", ""]
    lines += ["| policy | top_n | filled | hits/top_n | rounds | candidates | final nprobe | p50 ms | p95 ms |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, row in fill.items():
        policy, top = key.rsplit("_top", 1)
        lines.append(
            f"| {policy} | {top} | {row['filled_fraction']} | {row['mean_hits_over_top_n']} | {row['mean_rounds']} | "
            f"{row['mean_candidates']} | {row['nprobe_final']} | {row['latency_ms']['p50']} | "
            f"{row['latency_ms']['p95']} |"
        )
    target = results["target"]
    lines += ["", "## Target: search + metadata, top_n 10, nprobe 16", ""]
    lines += ["| design | p50 ms | p95 ms | mean ms |", "|---|---|---|---|"]
    for key in ("original_flat_plus_id_in", "ours_hnsw_plus_sidecar"):
        row = target[key]
        lines.append(f"| {key} | {row['p50']} | {row['p95']} | {row['mean']} |")
    lines += ["", f"ratio (p50): {target['ratio_p50']}, (mean): {target['ratio_mean']}; target <= 0.2; "
              f"our stages p50: {target['ours_stage_p50_ms']}"]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=Shape.vectors)
    parser.add_argument("--nlist", type=int, default=Shape.nlist)
    parser.add_argument("--rows", type=int, default=Shape.rows)
    parser.add_argument("--queries", type=int, default=Shape.queries)
    parser.add_argument("--reps", type=int, default=100, help="measured metadata lookups per case")
    parser.add_argument("--warm", type=int, default=200, help="metadata lookups before measuring")
    parser.add_argument("--out", type=Path, default=BENCH_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Single queries use one thread in FAISS anyway; pinning it keeps the runs comparable.
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    data = BenchData(args.out, Shape(vectors=args.vectors, nlist=args.nlist, rows=args.rows, queries=args.queries))
    ensure_index(data)
    ensure_metadata(data, "taxonomy")
    ensure_metadata(data, "id")
    results: dict[str, Any] = {"machine": machine(), "shape": vars(data.shape) | {"dim": 768, "pq_m": 16}}
    built_s = time.perf_counter() - started
    queries = np.load(data.queries)
    truth = np.load(data.truth)
    ids_pool = np.asarray(sorted({int(i) for i in truth[:, :50].ravel()} | set(range(0, args.rows, 997))))
    logger.info("index: latency and recall")
    results["index"], hnsw = bench_index(data, queries, truth)
    logger.info("metadata lookups")
    results["metadata"] = bench_metadata(data, ids_pool, args.reps, args.warm)
    logger.info("target: ours against the original design")
    results["target"], engine = bench_target(data, hnsw, queries, rounds=2)
    logger.info("fill rate")
    results["fill"] = bench_fill(engine, queries, SearchSettings().limits())
    results["seconds"] = {"data_ready": round(built_s, 1), "total": round(time.perf_counter() - started, 1)}
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    print(f"\nmachine: {results['machine']}\nseconds: {results['seconds']}, peak RSS {results['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
