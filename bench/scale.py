"""Full-scale benchmark: make a synthetic collection of N vectors (bench/scale_data.py), measure it, delete it.

    make bench-scale                                           # 1M, 10M, 50M, then 200M vectors
    .venv/bin/python -m bench.scale --vectors 1000000          # one size
    .venv/bin/python -m bench.scale --report                   # tables and plot from the results so far

For each size, each step runs as its own process, timed, with its peak RSS (wait4): generating the
collection, making the lookup sidecar; then the search service runs as a real process
(`python -m services.search`, index memory-mapped) and is measured over HTTP: start-up without
and with the coarse graph cached, the first 100 queries after its files were evicted from the page
cache, p50/p95/p99 over a grid of top_n, nprobe, scopes and taxon filters with fill rates (twice, once
the start-up's background work has ended: a first pass partly from disk, then the steady state), its
memory (anonymous and file-backed, /proc/PID/smaps_rollup) after 1,000 queries, the first 100
queries of another cold start with SEARCH_PREFETCH=all, and the grid's p50s without the sidecar
(DuckDB rows). Results go to var/bench/scale/results-N.json; --report
renders them as Markdown (printed) and docs/images/search-scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.proc import proc_stat
from bench.scale_data import SCALE_DIR, Layout, ScaleShape

logger = logging.getLogger("bench.scale")

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SIZES = (1_000_000, 10_000_000, 50_000_000, 200_000_000)
PORT = int(os.environ.get("BENCH_SCALE_PORT", "23002"))
TOP_NS = (10, 50)
NPROBES = (16, 64)
VARIANTS = ("all", "url_only", "inaturalist", "class", "genus")
HEADLINE = {(10, 16, "all"), (10, 16, "inaturalist"), (10, 16, "class")}
PLOT = ROOT / "docs" / "images" / "search-scale.png"
PREFETCH_DONE = re.compile(r"page cache prefetch read (?P<gb>[\d.]+) GB .* in (?P<seconds>[\d.]+) s")
BEGIN, END = "<!-- tables: made by python -m bench.scale --report -->", "<!-- end of tables -->"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    pick = lambda q: round(float(np.percentile(ordered, q)), 2)  # noqa: E731
    return {"p50": pick(50), "p95": pick(95), "p99": pick(99), "max": round(float(ordered[-1]), 2), "n": len(samples)}


def beside() -> dict[str, Any]:
    """What else was running: load average and the busiest other processes."""
    ps = subprocess.run(
        ["ps", "-eo", "pcpu,rss,args", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True
    ).stdout.splitlines()
    busy = [" ".join([*line.split()[:2], " ".join(line.split()[2:])[:90]]) for line in ps[:6]]
    with open("/proc/meminfo") as handle:
        meminfo = {line.split(":")[0]: int(line.split()[1]) for line in handle}
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": [round(x, 2) for x in os.getloadavg()],
        "mem_available_gb": round(meminfo["MemAvailable"] / 2**20, 1),
        "busiest": busy,
    }


def measured(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a step as its own process (niced); wall time and peak RSS from wait4."""
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(["nice", "-n", "5", *command], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {log}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def evict(folder: Path) -> str:
    """Drop the collection's files from the page cache with posix_fadvise(DONTNEED), file by file.

    Not drop_caches: it would empty the cache of everything else running on a shared machine, and
    for pages no process maps the per-file call does the same to ours (checked with fincore).
    """
    subprocess.run(["sync"], check=False)
    how = "posix_fadvise(DONTNEED) on every collection file"
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return how


def cached_fraction(folder: Path) -> float:
    """Share of the collection's bytes in the page cache (mincore via fincore, when present)."""
    files = [str(p) for p in folder.rglob("*") if p.is_file() and p.stat().st_size]
    if not shutil.which("fincore") or not files:
        return float("nan")
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", *files], capture_output=True, text=True)
    cached = total = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            cached += int(parts[0])
            total += int(parts[2])
    return round(cached / total, 3) if total else float("nan")


def log_marks(log: Path, patterns: dict[str, str]) -> dict[str, datetime]:
    """The time of the first line of the service's log containing each pattern (names without a line left out)."""
    marks: dict[str, datetime] = {}
    for line in log.read_text().splitlines():
        for name, pattern in patterns.items():
            if pattern in line and name not in marks:
                marks[name] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return marks


def startup_stages(log: Path, launched: datetime) -> dict[str, float]:
    """Seconds between launch and the service's start-up log lines: imports, index open, graph, metadata open."""
    marks = {"launch": launched} | log_marks(
        log,
        {
            "process": "Started server process",
            "index": "services.search.index: opened",
            "graph": "coarse HNSW quantizer",
            "metadata": "services.search.app: candidates judged by",  # the metadata and its sidecar opened
        },
    )
    order = [name for name in ("launch", "process", "index", "graph", "metadata") if name in marks]
    return {f"{a}->{b}": round((marks[b] - marks[a]).total_seconds(), 2) for a, b in itertools.pairwise(order)}


def background_ended(log: Path) -> dict[str, float | None]:
    """Seconds after ready (the service's "Application startup complete") at which its log says the taxon names
    and the similarity scale were done; None for what it never logged."""
    marks = log_marks(
        log,
        {
            "ready": "Application startup complete",
            "taxa_s": "services.search.app: taxon names:",
            "similarity_scale_s": "similarity scale from",
        },
    )
    ready = marks.get("ready")
    return {
        name: round((marks[name] - ready).total_seconds(), 1) if ready and name in marks else None
        for name in ("taxa_s", "similarity_scale_s")
    }


def memory(pid: int) -> dict[str, int]:
    """MB from /proc/PID/smaps_rollup: RSS, anonymous (private) and file-backed (mapped) parts."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return {"rss_mb": rss // 1024, "anonymous_mb": anon // 1024, "file_mb": (rss - anon) // 1024}


class Service:
    """`python -m services.search` on a collection folder, as a real process."""

    def __init__(
        self, layout: Layout, log: Path, *, sidecar: bool, cache: Path, env: dict[str, str] | None = None
    ) -> None:
        self.layout, self.log, self.sidecar, self.cache = layout, log, sidecar, cache
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=600)

    def start(self) -> dict[str, float]:
        env = (
            os.environ
            | {
                "SEARCH_DATA_DIR": str(self.layout.folder),
                "SEARCH_PORT": str(PORT),
                "SEARCH_MMAP": "true",
                "SEARCH_CACHE_DIR": str(self.cache),
                "SEARCH_USE_SIDECAR": "true" if self.sidecar else "false",
                # With the sidecar DuckDB is not asked for rows. Without it every lookup by id reads the id index, whose
                # nodes DuckDB keeps in memory once read: ~1.8 GB at 234M rows once ~30,000 random ids were looked up
                # (8 bytes a row), so 1GB ran out of memory there (docs/benchmarks/scale.md).
                "SEARCH_DUCKDB_MEMORY_LIMIT": "1GB" if self.sidecar else "3GB",
                "SEARCH_DUCKDB_THREADS": "2",
                "OMP_NUM_THREADS": "1",
            }
            | self.extra_env
        )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", PORT)) == 0:
                raise RuntimeError(f"port {PORT} is taken")
        started = time.perf_counter()
        self.launched = datetime.now()  # the service logs local time
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [PY, "-m", "services.search"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the search service exited ({self.process.returncode}); see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        self.ready_at = time.perf_counter()
        ready = self.ready_at - started
        # Imports happen before the first log line, so that stage is launch -> "Started server process".
        return {"ready_s": round(ready, 2), "cpu_s": round(proc_stat(self.process.pid).cpu_s, 2)}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def search(
        self, vector: np.ndarray, top_n: int, nprobe: int, scope: str, filters: list[dict[str, str]]
    ) -> dict[str, Any]:
        """One search's figures, or {"error": "<status> <code>"} for an error answer (counted, not fatal)."""
        body = {"vectors": [vector.tolist()], "top_n": top_n, "nprobe": nprobe, "scope": scope, "filters": filters}
        started = time.perf_counter()
        response = self.client.post("/v1/search", json=body)
        wall = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            code = response.json().get("error", {}).get("code", "") if response.content else ""
            return {"error": f"{response.status_code} {code}".strip()}
        data = response.json()
        result = data["results"][0]
        return {
            "http_ms": wall,
            "took_ms": data["took_ms"],
            "hits": len(result["hits"]),
            "stopped": result["search"]["stopped"],
            "timings": data["timings"],
        }

    def wait_background(self, timeout: float = 600) -> dict[str, float | None]:
        """Wait until the start-up's background work has ended: the taxon names (/v1/taxa answers) and the
        similarity scale (/v1/stats has it; not waited for without the sidecar, where it is not measured).
        Seconds after ready as polled (the log's own times: `background_ended`)."""
        done: dict[str, float | None] = {"taxa_s": None, "similarity_scale_s": None}
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            now = round(time.perf_counter() - self.ready_at, 1)
            if done["taxa_s"] is None:
                names = self.client.get("/v1/taxa", params={"prefix": "a"})
                if names.status_code == 200:
                    done["taxa_s"] = now
                elif names.status_code == 503 and "retry-after" not in names.headers:
                    # metadata_unavailable without Retry-After: the service will not try again (-1: never loaded).
                    logger.warning("the taxon names will not load: %s", names.text[:300])
                    done["taxa_s"] = -1.0
            stats = self.client.get("/v1/stats").json()
            if done["similarity_scale_s"] is None and stats.get("similarity_scale"):
                done["similarity_scale_s"] = now
            scale_pending = self.sidecar and done["similarity_scale_s"] is None
            if done["taxa_s"] is not None and not scale_pending:
                break
            time.sleep(0.5)
        return done

    def wait_log(self, pattern: re.Pattern[str], timeout: float = 900) -> dict[str, float] | None:
        """The named groups (as numbers) of the first log line matching `pattern`, waiting for it; None if it
        did not come in time."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for line in self.log.read_text().splitlines():
                found = pattern.search(line)
                if found:
                    return {key: float(value) for key, value in found.groupdict().items()}
            time.sleep(0.5)
        return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


def cell_query(queries: Any, number: int, variant: str) -> tuple[str, list[dict[str, str]]]:
    if variant in ("class", "genus"):
        names = queries["classes"] if variant == "class" else queries["genera"]
        return "all", [{"rank": variant, "value": str(names[number])}]
    return variant, []


def grid(
    service: Service, queries: Any, per_cell: int, headline: int, *, after: int = 0, memory_at: int | None = None
) -> dict[str, Any]:
    """Every (top_n, nprobe, variant) cell; memory is read once `memory_at` queries have been made."""
    vectors = queries["vectors"]
    cells: dict[str, Any] = {}
    done = after
    mem: dict[str, int] | None = None
    for top_n in TOP_NS:
        for nprobe in NPROBES:
            for variant in VARIANTS:
                count = headline if (top_n, nprobe, variant) in HEADLINE else per_cell
                took, http, stages = [], [], {"index_ms": [], "screen_ms": [], "fetch_ms": []}
                filled = 0
                stopped: dict[str, int] = {}
                errors: dict[str, int] = {}
                before = proc_stat(service.pid)  # CPU seconds and disk reads (major faults) of this cell
                for i in range(count):
                    number = (i * 7 + 100) % len(vectors)
                    scope, filters = cell_query(queries, number, variant)
                    out = service.search(vectors[number], top_n, nprobe, scope, filters)
                    done += 1
                    if "error" in out:
                        errors[out["error"]] = errors.get(out["error"], 0) + 1
                        continue
                    took.append(out["took_ms"])
                    http.append(out["http_ms"])
                    for stage in stages:
                        stages[stage].append(out["timings"][stage])
                    filled += out["hits"] == top_n
                    stopped[out["stopped"]] = stopped.get(out["stopped"], 0) + 1
                    if memory_at is not None and mem is None and done >= memory_at:
                        mem = memory(service.pid)
                after = proc_stat(service.pid)
                cpu = (after.cpu_s - before.cpu_s) * 1000 / count
                if not took:
                    took, http = [float("nan")], [float("nan")]
                    stages = {k: [float("nan")] for k in stages}
                cells[f"{top_n}/{nprobe}/{variant}"] = {
                    "took_ms": percentiles(took),
                    "service_cpu_ms_per_query": round(cpu, 2),
                    "major_faults_per_query": round((after.major_faults - before.major_faults) / count, 1),
                    "http_ms": percentiles(http),
                    "stages_p50_ms": {k: round(statistics.median(v), 2) for k, v in stages.items()},
                    "filled": filled,
                    "queries": count,
                    "stopped": stopped,
                    "errors": errors,
                }
                logger.info(
                    "%s: p50 %.1f ms, filled %d/%d%s",
                    f"{top_n}/{nprobe}/{variant}",
                    statistics.median(took),
                    filled,
                    count,
                    f", errors {errors}" if errors else "",
                )
    if memory_at is not None and mem is None:
        mem = memory(service.pid)  # fewer queries than memory_at (a short run): read at the end, and said
        mem["queries"] = done
    return {"cells": cells, "memory_after": mem, "queries_made": done}


def sizes_on_disk(layout: Layout) -> dict[str, int]:
    def du(path: Path) -> int:
        if path.is_file():
            return path.stat().st_blocks * 512
        return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())

    return {
        "index_mb": du(layout.index) // 2**20,
        "metadata_mb": du(layout.metadata) // 2**20,
        "sidecar_mb": du(layout.sidecar) // 2**20 if layout.sidecar.exists() else 0,
        "total_mb": du(layout.folder) // 2**20,
    }


def measure(vectors: int, *, keep: bool, per_cell: int, headline: int, fallback_per_cell: int) -> dict[str, Any]:
    shape = ScaleShape.for_vectors(vectors)
    layout = Layout(SCALE_DIR / str(vectors))
    logs = SCALE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    out: dict[str, Any] = {
        "vectors": vectors, "rows": shape.rows, "species": shape.species, "commit": commit.strip(), "beside": {},
    }  # fmt: skip
    out["beside"]["start"] = beside()
    steps = layout.folder / "steps.json"  # step measurements, kept if the benchmark is restarted
    if not layout.info.is_file():
        shutil.rmtree(layout.folder, ignore_errors=True)
        out["generate"] = measured(
            [PY, "-m", "bench.scale_data", "--vectors", str(vectors), "--out", str(layout.folder)],
            logs / f"generate-{vectors}.log",
        )
        steps.write_text(json.dumps({"generate": out["generate"]}))
    out |= {k: v for k, v in json.loads(steps.read_text()).items() if k not in out} if steps.is_file() else {}
    out["generated"] = json.loads(layout.info.read_text())
    out["beside"]["sidecar"] = beside()
    if not (layout.sidecar / "manifest.json").is_file():
        out["sidecar"] = measured(
            [PY, "-m", "collection", "sidecar", "--metadata", str(layout.metadata), "--out", str(layout.sidecar)],
            logs / f"sidecar-{vectors}.log",
        )
        steps.write_text(json.dumps({k: out[k] for k in ("generate", "sidecar") if k in out}))
    out |= {k: v for k, v in json.loads(steps.read_text()).items() if k not in out} if steps.is_file() else {}
    out["disk"] = sizes_on_disk(layout)
    # Sizes may be made side by side (two runs of this benchmark), but only one is measured at a time.
    with (SCALE_DIR / "measure.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        service = measure_service(
            layout, vectors, per_cell=per_cell, headline=headline, fallback_per_cell=fallback_per_cell
        )
    out["beside"] |= service.pop("beside")
    out |= service
    (SCALE_DIR / f"results-{vectors}.json").write_text(json.dumps(out, indent=2))
    if not keep:
        shutil.rmtree(layout.folder)
    return out


def measure_prefetch(layout: Layout, vectors: int, queries: Any) -> dict[str, Any]:
    """A cold start with SEARCH_PREFETCH=all: the first 100 queries while the files are read (the same queries as
    the cold start without it), and how long reading them took (from the service's log)."""
    out: dict[str, Any] = {"evicted_before_prefetch": evict(layout.folder)}
    log = SCALE_DIR / "logs" / f"search-{vectors}-prefetch.log"
    service = Service(layout, log, sidecar=True, cache=layout.folder / "cache", env={"SEARCH_PREFETCH": "all"})
    with running(service):
        out["startup_prefetch"] = service.start()
        first = [service.search(queries["vectors"][i], 10, 16, "all", [])["http_ms"] for i in range(100)]
        out["first_100_prefetch_ms"] = {"each": [round(x, 1) for x in first], **percentiles(first)}
        out["first_100_prefetch_ms"]["sum_ms"] = round(sum(first))
        out["prefetch"] = service.wait_log(PREFETCH_DONE)
        out["cached_fraction_after_prefetch"] = cached_fraction(layout.folder)
    return out


def measure_service(
    layout: Layout, vectors: int, *, per_cell: int, headline: int, fallback_per_cell: int
) -> dict[str, Any]:
    """The search service on one collection: start-ups, cold first queries, the grid, memory, the fallback."""
    logs = SCALE_DIR / "logs"
    out: dict[str, Any] = {"beside": {}}
    queries = np.load(layout.queries)
    cache = layout.folder / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    # Start-up without the coarse graph cached: it is built.
    service = Service(layout, logs / f"search-{vectors}-build.log", sidecar=True, cache=cache)
    with running(service):
        out["startup_graph_built"] = service.start()
        out["startup_graph_built"]["stages"] = startup_stages(service.log, service.launched)
        out["startup_graph_built"]["first_query_ms"] = round(
            service.search(queries["vectors"][0], 10, 16, "all", [])["http_ms"], 1
        )
    # Cold start with the graph cached: the collection's files evicted from the page cache first.
    out["beside"]["search"] = beside()
    out["evicted"] = evict(layout.folder)
    out["cached_fraction_after_evict"] = cached_fraction(layout.folder)
    service = Service(layout, logs / f"search-{vectors}.log", sidecar=True, cache=cache)
    with running(service):
        out["startup_cached"] = service.start()
        out["startup_cached"]["stages"] = startup_stages(service.log, service.launched)
        out["memory_at_ready"] = memory(service.pid)
        first = [service.search(queries["vectors"][i], 10, 16, "all", [])["http_ms"] for i in range(100)]
        out["first_100_ms"] = {"each": [round(x, 1) for x in first], **percentiles(first), "sum_ms": round(sum(first))}
        out["cached_fraction_after_first_100"] = cached_fraction(layout.folder)
        # The start-up's background work (taxon names, similarity scale) shares the 2 cores with the first
        # searches; the grid is measured once it has ended, and twice: the first pass's lists and rows come
        # partly from disk (each cell's queries are the same vectors, so its first cell paid for the others),
        # the second is the steady state with them in the page cache.
        service.wait_background()
        out["background"] = background_ended(service.log)
        out["cached_fraction_before_grid"] = cached_fraction(layout.folder)
        out["grid_first_pass"] = grid(service, queries, per_cell, headline, after=100, memory_at=1000)
        out["cached_fraction_after_first_pass"] = cached_fraction(layout.folder)
        out["grid"] = grid(service, queries, per_cell, headline)
        out["memory_end"] = memory(service.pid)
    out |= measure_prefetch(layout, vectors, queries)
    out["service_log"] = [line for line in (logs / f"search-{vectors}.log").read_text().splitlines() if "INFO" in line][
        :20
    ]
    out["beside"]["fallback"] = beside()
    service = Service(layout, logs / f"search-{vectors}-duckdb.log", sidecar=False, cache=cache)
    with running(service):
        out["startup_duckdb"] = service.start()
        # Without the sidecar the taxon names are a GROUP BY per rank in DuckDB (~45 s of both cores at 234M
        # rows, in the same process and DuckDB pool as the lookups): measured after them, as the sidecar's grid is.
        service.wait_background()
        out["background_duckdb"] = background_ended(service.log)
        out["fallback"] = grid(service, queries, fallback_per_cell, fallback_per_cell)
        out["memory_duckdb"] = memory(service.pid)
    out["beside"]["end"] = beside()
    return out


def machine() -> dict[str, Any]:
    """bench.search's description of the machine; the load and the date are recorded per step (`beside`)."""
    from bench.search import machine as described

    return {k: v for k, v in described().items() if k not in ("load_average_at_start", "date")}


def load_results() -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in SCALE_DIR.glob("results-*.json")]
    return sorted(found, key=lambda r: r["vectors"])


def _m(n: int) -> str:
    return f"{n / 1e6:g}M"


def first_pass(result: dict[str, Any]) -> dict[str, Any]:
    """The grid's first pass (memory after 1,000 queries is read there); older results had one pass only."""
    return result.get("grid_first_pass", result["grid"])


def report(results: list[dict[str, Any]]) -> str:
    """Markdown tables of every measured size, and the plot."""
    lines: list[str] = []
    cols = " | ".join(_m(r["vectors"]) for r in results)
    sep = "|---" * (len(results) + 1) + "|"

    def row(label: str, values: list[Any]) -> None:
        lines.append(f"| {label} | " + " | ".join(str(v) for v in values) + " |")

    lines += ["### Making it", "", f"| | {cols} |", sep]
    row("metadata rows", [f"{r['rows']:,}" for r in results])
    row("species", [f"{r['species']:,}" for r in results])

    def generated(r: dict[str, Any]) -> str:
        parts = r["generated"]
        total = r.get("generate", {}).get("seconds", "?")
        meta = parts["metadata"]
        return f"{total} ({parts['index']['seconds']} / {meta['rows_s']} / {meta['id_index_s']})"

    row("generate: s (index s / rows s / id index s)", [generated(r) for r in results])
    row("generate: peak RSS MB", [r.get("generate", {}).get("peak_rss_mb", "?") for r in results])
    row("sidecar: s", [r.get("sidecar", {}).get("seconds", "?") for r in results])
    row("sidecar: peak RSS MB", [r.get("sidecar", {}).get("peak_rss_mb", "?") for r in results])
    for part in ("index_mb", "metadata_mb", "sidecar_mb", "total_mb"):
        row(f"disk: {part.replace('_mb', '')} MB", [r["disk"][part] for r in results])
    lines += ["", "### Starting and memory", "", f"| | {cols} |", sep]

    def ready(start: dict[str, Any]) -> str:
        return f"{start['ready_s']} ({start['cpu_s']})" if "cpu_s" in start else str(start["ready_s"])

    def stages(start: dict[str, Any]) -> str:
        return " / ".join(str(v) for v in start.get("stages", {}).values()) or "?"

    row("ready, coarse graph built: s (CPU s)", [ready(r["startup_graph_built"]) for r in results])
    row("  then the first query: ms", [r["startup_graph_built"].get("first_query_ms", "?") for r in results])
    row("ready, graph cached, cold page cache: s (CPU s)", [ready(r["startup_cached"]) for r in results])
    row("  stages: imports / index open / graph read / metadata+sidecar open (s)", [
        stages(r["startup_cached"]) for r in results])  # fmt: skip
    row("ready, DuckDB fallback: s (CPU s)", [ready(r["startup_duckdb"]) for r in results])
    row("collection in page cache after eviction", [r.get("cached_fraction_after_evict") for r in results])
    row("first 100 queries after cold start: sum ms", [r["first_100_ms"]["sum_ms"] for r in results])
    row(
        "first 100: p50 / p99 / max ms",
        [f"{r['first_100_ms']['p50']} / {r['first_100_ms']['p99']} / {r['first_100_ms']['max']}" for r in results],
    )
    row(
        "with SEARCH_PREFETCH=all: ready s / first 100 p50, p99, max ms",
        [
            f"{r['startup_prefetch']['ready_s']} / {p['p50']}, {p['p99']}, {p['max']}"
            if (p := r.get("first_100_prefetch_ms"))
            else "-"
            for r in results
        ],
    )
    row(
        "  prefetch: GB read in s; collection in page cache after",
        [
            f"{r['prefetch']['gb']} in {r['prefetch']['seconds']}; {r.get('cached_fraction_after_prefetch')}"
            if r.get("prefetch")
            else "-"
            for r in results
        ],
    )
    row(
        "background work done after ready: taxon names / similarity scale (s)",
        [f"{r.get('background', {}).get('taxa_s', '?')} / {r.get('background', {}).get('similarity_scale_s', '?')}"
         for r in results],
    )  # fmt: skip
    row(
        "collection in page cache: before the grid / after its first pass",
        [f"{r.get('cached_fraction_before_grid', '?')} / {r.get('cached_fraction_after_first_pass', '?')}"
         for r in results],
    )  # fmt: skip
    row(
        "memory at ready: anon / file MB",
        [f"{r['memory_at_ready']['anonymous_mb']} / {r['memory_at_ready']['file_mb']}" for r in results],
    )
    row(
        "after 1,000 queries: anon / file MB",
        [f"{m['anonymous_mb']} / {m['file_mb']}" for m in (first_pass(r)["memory_after"] for r in results)],
    )
    row(
        "after the grid: anon / file MB",
        [f"{r['memory_end']['anonymous_mb']} / {r['memory_end']['file_mb']}" for r in results],
    )
    row(
        "DuckDB fallback after its grid: anon / file MB",
        [f"{r['memory_duckdb']['anonymous_mb']} / {r['memory_duckdb']['file_mb']}" for r in results],
    )
    lines += ["", "### Search + metadata (server `took_ms`; HTTP round trip p50 in brackets)", ""]
    lines += [
        "p50 / p95 / p99 ms, filled/queries; one column per size.",
        "",
        f"| top_n / nprobe / scope or filter | {cols} |",
        sep,
    ]

    def cells(grid_of: Callable[[dict[str, Any]], dict[str, Any]], text: Callable[[dict[str, Any]], Any]) -> None:
        """One row per grid cell, one column per size: `text` of the cell in the grid `grid_of` picks."""
        for key in results[0]["grid"]["cells"]:
            row(key, [text(grid_of(r)["cells"][key]) for r in results])

    def steady(cell: dict[str, Any]) -> str:
        t = cell["took_ms"]
        return f"{t['p50']} / {t['p95']} / {t['p99']} ({cell['http_ms']['p50']}), {cell['filled']}/{cell['queries']}"

    cells(lambda r: r["grid"], steady)
    lines += [
        "",
        "### The grid's first pass, its lists and rows partly read from disk: p50 / p99 ms, major faults per query",
        "",
        "Each cell searches the same query vectors, so a cell's first variant reads the lists and rows its "
        "neighbours then find in the page cache.",
        "",
        f"| top_n / nprobe / scope or filter | {cols} |",
        sep,
    ]
    cells(
        first_pass,
        lambda c: f"{c['took_ms']['p50']} / {c['took_ms']['p99']}, {c.get('major_faults_per_query', '?')}",
    )
    lines += ["", "### Service CPU per query (ms; all of it: HTTP, JSON, search, rows)", ""]
    lines += [f"| top_n / nprobe / scope or filter | {cols} |", sep]
    cells(lambda r: r["grid"], lambda c: c.get("service_cpu_ms_per_query", "?"))
    lines += [
        "",
        "### Without the sidecar (DuckDB rows): p50 ms, filled/queries",
        "",
        f"| top_n / nprobe / scope or filter | {cols} |",
        sep,
    ]
    cells(lambda r: r["fallback"], lambda c: f"{c['took_ms']['p50']}, {c['filled']}/{c['queries']}")
    for path in sorted(SCALE_DIR.glob("index-only-*.json")):
        alone = json.loads(path.read_text())
        lines += ["", f"### The index alone at {_m(alone['vectors'])} vectors (in-process, one thread)", ""]
        lines += [
            f"Opened (mmap) in {alone['open_s']} s; coarse graph {alone['graph_s']} s; CPU for both "
            f"{alone['open_cpu_s']} s. Memory anon / file MB: at ready {alone['memory_ready']['anonymous_mb']} / "
            f"{alone['memory_ready']['file_mb']}, after 1,000 searches {alone['memory_after_1000']['anonymous_mb']} / "
            f"{alone['memory_after_1000']['file_mb']}.",
        ]
        if "first_100_ms" in alone:
            first = alone["first_100_ms"]
            lines += [
                "",
                f"First 100 searches (k 10, nprobe 16) after evicting the index file from the page cache "
                f"(cached before: {alone['cached_fraction_after_evict']}): {first['sum_ms']} ms in all, "
                f"{first['cpu_sum_ms']} ms of it CPU; p50 {first['p50']}, p99 {first['p99']} ms.",
            ]
        lines += [
            "",
            "| k / nprobe | p50 ms | p95 ms | p99 ms | CPU p50 ms | CPU p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for key, cell in alone["cells"].items():
            cpu99 = cell.get("cpu_p99", "?")
            lines.append(f"| {key} | {cell['p50']} | {cell['p95']} | {cell['p99']} | {cell['cpu_p50']} | {cpu99} |")
    plot(results)
    return "\n".join(lines)


def plot(results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["vectors"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (
        ("10/16/all", "top 10, nprobe 16, all"),
        ("10/16/inaturalist", "inaturalist"),
        ("10/16/class", "class filter"),
        ("50/64/all", "top 50, nprobe 64, all"),
    ):
        left.plot(n, [r["grid"]["cells"][key]["took_ms"]["p50"] for r in results], marker="o", label=f"{label} p50")
    left.plot(
        n,
        [r["grid"]["cells"]["10/16/all"]["took_ms"]["p99"] for r in results],
        marker="x",
        linestyle="--",
        label="top 10, nprobe 16, all p99",
    )
    left.plot(
        n,
        [r["fallback"]["cells"]["10/16/all"]["took_ms"]["p50"] for r in results],
        marker="s",
        linestyle=":",
        label="no sidecar (DuckDB) p50",
    )
    left.axhline(10, color="grey", linewidth=0.8, linestyle="-.", label="targets at 200M: p50 10 ms, p99 50 ms")
    left.axhline(50, color="grey", linewidth=0.8, linestyle="-.")
    left.set(xscale="log", yscale="log", xlabel="vectors", ylabel="ms (search + metadata)", title="Latency")
    left.legend(fontsize=7)
    after = [first_pass(r)["memory_after"] for r in results]
    right.plot(n, [m["anonymous_mb"] for m in after], marker="o", label="anonymous (private)")
    right.plot(n, [m["file_mb"] for m in after], marker="o", label="file-backed (mapped)")
    right.plot(n, [r["disk"]["total_mb"] for r in results], marker="s", linestyle=":", label="collection on disk")
    right.set(
        xscale="log", yscale="log", xlabel="vectors", ylabel="MB", title="Search service memory after 1,000 queries"
    )
    right.legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, action="append", help="sizes to measure (default: 1M, 10M, 50M, 200M)")
    parser.add_argument("--keep", action="store_true", help="keep each collection after measuring it")
    parser.add_argument("--per-cell", type=int, default=100, help="queries per grid cell (default 100)")
    parser.add_argument(
        "--headline",
        type=int,
        default=300,
        help="queries per headline cell (top 10, nprobe 16: all, inaturalist, class; default 300)",
    )
    parser.add_argument(
        "--fallback-per-cell", type=int, default=20, help="queries per cell without the sidecar (default 20)"
    )
    parser.add_argument("--report", action="store_true", help="only render the results so far")
    parser.add_argument("--write", type=Path, help="put the tables into this Markdown file, between the markers")
    parser.add_argument("--index-only", type=int, help="measure only the index of this (already made) size")
    parser.add_argument(
        "--prefetch-only", type=int, help="measure only the cold start with SEARCH_PREFETCH=all of this (kept) size"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.prefetch_only:
        print(json.dumps(prefetch_only(args.prefetch_only), indent=2))
        return 0
    if args.index_only:
        print(json.dumps(index_only(args.index_only), indent=2))
        return 0
    if not args.report:
        (SCALE_DIR / "machine.json").parent.mkdir(parents=True, exist_ok=True)
        (SCALE_DIR / "machine.json").write_text(json.dumps(machine(), indent=2))
        for vectors in args.vectors or SIZES:
            measure(
                vectors,
                keep=args.keep,
                per_cell=args.per_cell,
                headline=args.headline,
                fallback_per_cell=args.fallback_per_cell,
            )
            print(report(load_results()), flush=True)
    tables = report(load_results())
    if args.report:  # after measuring, the last size's report above already holds every size
        print(tables)
    if args.write:
        text = args.write.read_text()
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.write.write_text(f"{head}{BEGIN}\n{tables}\n{END}{tail}")
    return 0


def prefetch_only(vectors: int) -> dict[str, Any]:
    """`measure_prefetch` on a kept collection, its figures added to that size's results."""
    layout = Layout(SCALE_DIR / str(vectors))
    path = SCALE_DIR / f"results-{vectors}.json"
    with (SCALE_DIR / "measure.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = measure_prefetch(layout, vectors, np.load(layout.queries)) | {"beside_prefetch": beside()}
    path.write_text(json.dumps(json.loads(path.read_text()) | found, indent=2))
    return {k: v for k, v in found.items() if k != "first_100_prefetch_ms"} | {
        "first_100_prefetch_ms": {k: v for k, v in found["first_100_prefetch_ms"].items() if k != "each"}
    }


def index_only(vectors: int, queries_per_cell: int = 200) -> dict[str, Any]:
    """The index alone, in this process: open (mmap), coarse graph, search latency by nprobe and k, memory.

    For a size whose metadata or sidecar is not made yet: the IVF scan is what grows with N.
    """
    import faiss

    from services.search.index import VectorIndex

    faiss.omp_set_num_threads(1)
    layout = Layout(SCALE_DIR / str(vectors))
    queries = np.load(layout.queries)["vectors"]
    out: dict[str, Any] = {"vectors": vectors, "beside": beside(), "memory_before": memory(os.getpid())}
    out["evicted"] = evict(layout.index.parent)
    out["cached_fraction_after_evict"] = cached_fraction(layout.index.parent)
    cpu = time.process_time()
    started = time.perf_counter()
    index = VectorIndex.open(layout.index, mmap=True)
    out["open_s"] = round(time.perf_counter() - started, 2)
    out["memory_open"] = memory(os.getpid())
    started = time.perf_counter()
    index.upgrade_quantizer("auto", cache_dir=layout.folder / "cache")
    out["graph_s"] = round(time.perf_counter() - started, 2)
    out["open_cpu_s"] = round(time.process_time() - cpu, 2)
    out["memory_ready"] = memory(os.getpid())
    first, first_cpu = [], []
    for i in range(100):
        tick, tick_cpu = time.perf_counter(), time.process_time()
        index.search(queries[i][None, :], 10, 16, 64)
        first.append((time.perf_counter() - tick) * 1000)
        first_cpu.append((time.process_time() - tick_cpu) * 1000)
    out["first_100_ms"] = {**percentiles(first), "sum_ms": round(sum(first)), "cpu_sum_ms": round(sum(first_cpu))}
    cells: dict[str, Any] = {}
    made = 100
    # k 40 and 200: what a filtered search's first round asks for (top_n x overfetch 4).
    for k in (10, 40, 50, 200):
        for nprobe in (16, 64):
            took, cpu_ms = [], []
            for i in range(queries_per_cell):
                vector = queries[(i * 7 + 100) % len(queries)][None, :]
                tick, tick_cpu = time.perf_counter(), time.process_time()
                index.search(vector, k, nprobe, 64)
                took.append((time.perf_counter() - tick) * 1000)
                cpu_ms.append((time.process_time() - tick_cpu) * 1000)
                made += 1
                if made == 1000:
                    out["memory_after_1000"] = memory(os.getpid())
            cpu_p = percentiles(cpu_ms)
            cells[f"k{k}/nprobe{nprobe}"] = {**percentiles(took), "cpu_p50": cpu_p["p50"], "cpu_p99": cpu_p["p99"]}
            logger.info("k %d nprobe %d: %s", k, nprobe, cells[f"k{k}/nprobe{nprobe}"])
    out["cells"] = cells
    out["memory_end"] = memory(os.getpid())
    out["cached_fraction_end"] = cached_fraction(layout.index.parent)
    (SCALE_DIR / f"index-only-{vectors}.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
