"""Fetcher benchmark: 48 thumbnails from three local sources with 50-200 ms latency, one of them
rate-limited at 1 request/s; the fetcher cold, warm and warm after a restart, against a plain pool of
8 threads using `requests` doing the same work (download, thumbnail, WebP) in the same run.

    make bench-fetcher            # = .venv/bin/python -m bench.fetcher
    flock /tmp/bench.lock .venv/bin/python -m bench.fetcher --out var/bench/fetcher

Prints a summary and writes results.json and the rate-limited server's own request log to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import multiprocessing
import platform
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import requests
import uvicorn
from PIL import Image

from bench.fetcher_sources import IMAGES_PER_SOURCE, SourceSpec, serve
from services.fetcher.app import create_app
from services.fetcher.safety import StaticResolver
from services.fetcher.settings import FetcherSettings

SOURCES = [SourceSpec("fast-a.bench.test"), SourceSpec("fast-b.bench.test"), SourceSpec("limited.bench.test", True)]
LIMITED = "limited.bench.test"


@dataclass
class Phase:
    name: str
    wall_s: float
    ok: int
    statuses: dict[str, int]
    fast_done_s: float  # when the last thumbnail from the two unlimited sources was done
    limited_done_s: float  # when the last one from the rate-limited source was done
    limited_log: dict[str, Any] = field(default_factory=dict)


def _urls(ports: dict[str, int], by_name: bool) -> list[tuple[str, str]]:
    """(source name, URL) for every image: by host name (the fetcher) or by 127.0.0.1 (the baseline)."""
    urls = []
    for index, spec in enumerate(SOURCES):
        host = spec.name if by_name else "127.0.0.1"
        for i in range(IMAGES_PER_SOURCE):
            urls.append((spec.name, f"http://{host}:{ports[spec.name]}/photos/{index * 100 + i}/large.jpg"))
    return urls


def _read_log(path: Path, since: float, until: float) -> dict[str, Any]:
    """The rate-limited server's view of a phase: requests it saw, the closest two, any 429 it sent."""
    rows = []
    for line in path.read_text().splitlines():
        monotonic, _wall, status, _gap, _path = line.split(" ", 4)
        if since <= float(monotonic) <= until:
            rows.append((float(monotonic), int(status)))
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(rows)]
    return {
        "requests": len(rows),
        "min_gap_s": round(min(gaps), 3) if gaps else None,
        "gaps_under_1s": sum(1 for gap in gaps if gap < 1.0),
        "answered_429": sum(1 for _, status in rows if status == 429),
    }


class FetcherServer:
    """The real fetcher app under uvicorn in a thread, its host names answered by a table (127.0.0.1)."""

    def __init__(self, settings: FetcherSettings, port: int) -> None:
        resolver = StaticResolver({spec.name: ["127.0.0.1"] for spec in SOURCES})
        config = uvicorn.Config(
            create_app(settings, resolver=resolver), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> FetcherServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()


async def _fetcher_phase(name: str, base: str, urls: list[tuple[str, str]], log: Path) -> Phase:
    """Every thumbnail asked for at once, as a page of results does (through GET /v1/image)."""
    done: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        started = time.monotonic()

        async def one(source: str, url: str) -> None:
            response = await client.get("/v1/image", params={"url": url, "size": "thumb"})
            word = "ok" if response.status_code == 200 else response.json()["error"]["code"]
            statuses[word] = statuses.get(word, 0) + 1
            done.setdefault(source, []).append(time.monotonic() - started)

        await asyncio.gather(*(one(source, url) for source, url in urls))
        wall = time.monotonic() - started
    return Phase(
        name=name,
        wall_s=round(wall, 3),
        ok=statuses.get("ok", 0),
        statuses=statuses,
        fast_done_s=round(max(t for s, times in done.items() if s != LIMITED for t in times), 3),
        limited_done_s=round(max(done[LIMITED]), 3),
        limited_log=_read_log(log, started, time.monotonic()),
    )


def _baseline_phase(urls: list[tuple[str, str]], log: Path) -> Phase:
    """A plain pool of 8 threads with `requests`: download, thumbnail to 256 px, WebP, nothing else."""
    local = threading.local()
    started = time.monotonic()

    def one(item: tuple[str, str]) -> tuple[str, str, float]:
        source, url = item
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        response = session.get(url, timeout=30)
        if response.status_code != 200:
            return source, str(response.status_code), time.monotonic() - started
        with Image.open(io.BytesIO(response.content)) as image:
            image = image.convert("RGB")
            image.thumbnail((256, 256), Image.Resampling.LANCZOS)
            image.save(io.BytesIO(), format="WEBP", quality=82, method=4)
        return source, "ok", time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, urls))
    wall = time.monotonic() - started
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return Phase(
        name="baseline: 8 threads + requests",
        wall_s=round(wall, 3),
        ok=statuses.get("ok", 0),
        statuses=statuses,
        fast_done_s=round(max(t for s, _, t in results if s != LIMITED), 3),
        limited_done_s=round(max(t for s, _, t in results if s == LIMITED), 3),
        limited_log=_read_log(log, started, time.monotonic()),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/bench/fetcher"), help="folder for results and logs")
    args = parser.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "limited-server.log"
    log.touch()

    # The sources run in a process of their own, so their threads do not share our GIL.
    ours, theirs = multiprocessing.Pipe()
    sources = multiprocessing.Process(target=serve, args=(SOURCES, log, theirs), daemon=True)
    sources.start()
    ports: dict[str, int] = ours.recv()

    settings = FetcherSettings(
        allow_private_networks="127.0.0.0/8",
        cache_dir=out / "cache",
        # As the service ships, plus the rate-limited source's policy; a queue long enough for its
        # 16 images at 1/s, so that every thumbnail is fetched rather than refused with Retry-After.
        domain_policies={LIMITED: {"max_concurrency": 1, "requests_per_second": 1.0}},
        queue_timeout=60,
        blocking_threads=2,
    )
    phases: list[Phase] = []
    try:
        phases.append(_baseline_phase(_urls(ports, by_name=False), log))
        time.sleep(1.5)  # let the rate-limited source forget the baseline
        port = _free_port()
        with FetcherServer(settings, port) as fetcher:
            phases.append(asyncio.run(_fetcher_phase("fetcher cold", fetcher.url, _urls(ports, True), log)))
            phases.append(asyncio.run(_fetcher_phase("fetcher warm (memory)", fetcher.url, _urls(ports, True), log)))
        with FetcherServer(settings, port) as fetcher:
            phases.append(
                asyncio.run(_fetcher_phase("fetcher warm after restart (disk)", fetcher.url, _urls(ports, True), log))
            )
    finally:
        ours.send("stop")
        sources.join(timeout=10)

    fetcher_logs = [p.limited_log for p in phases if p.name.startswith("fetcher")]
    all_gaps = [p["min_gap_s"] for p in fetcher_logs if p["min_gap_s"] is not None]
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "thumbnails": len(_urls(ports, True)),
        "phases": [asdict(p) for p in phases],
        "fetcher_requests_to_limited_source": sum(p["requests"] for p in fetcher_logs),
        "fetcher_min_gap_at_limited_source_s": min(all_gaps) if all_gaps else None,
        "fetcher_gaps_under_1s": sum(p["gaps_under_1s"] for p in fetcher_logs),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))

    print(f"{'phase':<36} {'wall s':>7} {'ok':>4} {'fast done s':>11} {'limited done s':>14}  limited source saw")
    for p in phases:
        seen = p.limited_log
        print(
            f"{p.name:<36} {p.wall_s:>7.2f} {p.ok:>4} {p.fast_done_s:>11.2f} {p.limited_done_s:>14.2f}  "
            f"{seen['requests']} requests, min gap {seen['min_gap_s']} s, {seen['gaps_under_1s']} under 1 s, "
            f"{seen['answered_429']} answered 429; statuses {p.statuses}"
        )
    print(
        f"fetcher, all phases: {summary['fetcher_requests_to_limited_source']} requests to the rate-limited source, "
        f"closest two {summary['fetcher_min_gap_at_limited_source_s']} s apart, "
        f"{summary['fetcher_gaps_under_1s']} within 1 s of another"
    )
    print(f"results: {out / 'results.json'}; the rate-limited server's log: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
