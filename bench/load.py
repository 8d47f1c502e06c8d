"""Load benchmark: the demo stack under N simulated page users (locust, headless), through the
reverse proxy when nginx is installed.

    make bench-load                          # = .venv/bin/python -m bench.load (16 users, 60 s)
    .venv/bin/python -m bench.load --users 4 --duration 20 --no-proxy --out var/bench/load-small

Starts the stack with the local runner (`python -m stack`, the offline demo unless a collection is
configured) on free ports, with the gateway's per-client rate limits raised (every simulated user
comes from 127.0.0.1), runs bench/locustfile.py, samples each service's RSS every second, and
writes results.json and results.md (throughput, p50/p95/p99 per request kind, errors by code, RSS
per service) to --out. docs/benchmarks/reliability.md records a run.

A scenario is a timeline of actions on the running stack during the load (SCENARIOS below); only
`steady` (no action) is defined here. Fault scenarios (kill -9, SIGSTOP/SIGCONT of a service, a
source down) add an entry and reuse everything else.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from stack.demo_collection import SPECIES
from stack.ports import listeners
from stack.processes import ROOT, SERVICES
from stack.proxy import nginx_available, proxy

KINDS = ("upload search", "text search", "record search", "image")


@dataclass
class Running:
    """What a scenario's actions may act on: each service's pid and URL, and the load's target."""

    pids: dict[str, int]
    urls: dict[str, str]
    target: str
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Action:
    at: float  # seconds after the load started
    what: str
    do: Callable[[Running], None]


SCENARIOS: dict[str, list[Action]] = {
    "steady": [],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def _wait_for_ready(runner: subprocess.Popen[str], timeout: float) -> str:
    assert runner.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = runner.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("Ready:"):
            # Keep reading the runner's output so it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in runner.stdout], daemon=True).start()  # type: ignore[union-attr]
            return line
    raise RuntimeError("the stack did not get ready:\n" + "".join(seen[-40:]))


def _records_with_images(gateway: str) -> list[int]:
    found: set[int] = set()
    for species in SPECIES:
        name = f"{species.taxonomy[5]} {species.taxonomy[6]}"
        answer = httpx.post(f"{gateway}/api/search", json={"text": name, "top_n": 50}, timeout=120)
        answer.raise_for_status()
        found |= {hit["record_id"] for hit in answer.json()["hits"] if hit.get("thumbnail_url")}
    return sorted(found)


def _rss(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory per service in MB (nginx: master and workers together)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            root = psutil.Process(pid)
            out[name] = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 1e6
        except psutil.NoSuchProcess:
            out[name] = 0.0
    return out


def _read_stats(prefix: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    kinds: dict[str, dict[str, Any]] = {}
    with (prefix.parent / f"{prefix.name}_stats.csv").open() as f:
        for row in csv.DictReader(f):
            kinds[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "per_second": float(row["Requests/s"]),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
                "max_ms": float(row["Max Response Time"]),
            }
    errors: dict[str, int] = {}
    with (prefix.parent / f"{prefix.name}_failures.csv").open() as f:
        for row in csv.DictReader(f):
            # locust writes CatchResponseError('502 fetcher_error'): keep what the locustfile said.
            error = re.sub(r"^CatchResponseError\((['\"])(.*)\1\)$", r"\2", row["Error"])
            key = f"{row['Name']}: {error}"
            errors[key] = errors.get(key, 0) + int(row["Occurrences"])
    return kinds, errors


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['users']} users, {results['duration_s']} s, scenario `{results['scenario']}`, "
        f"through {'the nginx proxy' if results['proxy'] else 'the gateway directly'}; "
        f"{results['records_with_images']} records with images; load average before {results['load_before']}, "
        f"after {results['load_after']}.",
        "",
        "| kind | requests | per s | p50 ms | p95 ms | p99 ms | max ms | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (*KINDS, "Aggregated"):
        k = results["kinds"].get(name)
        if k:
            lines.append(
                f"| {name} | {k['requests']} | {k['per_second']:.1f} | {k['p50_ms']:.0f} | {k['p95_ms']:.0f} | "
                f"{k['p99_ms']:.0f} | {k['max_ms']:.0f} | {k['failures']} |"
            )
    lines += ["", "Errors by code: " + (", ".join(f"{k} x{v}" for k, v in results["errors"].items()) or "none"), ""]
    lines += ["| service | RSS idle MB | RSS peak MB | RSS after MB |", "|---|---:|---:|---:|"]
    for name, rss in results["rss_mb"].items():
        lines.append(f"| {name} | {rss['idle']:.0f} | {rss['peak']:.0f} | {rss['after']:.0f} |")
    return "\n".join(lines) + "\n"


def run(users: int, duration: int, out: Path, use_proxy: bool, scenario: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in SERVICES}
    env = dict(os.environ)
    env |= {f"{name.upper()}_PORT": str(port) for name, port in ports.items()}
    # The demo's image source keeps the runner's port (STACK_DEMO_SOURCE_PORT, 8010): the built demo's
    # image URLs name it.
    # Every simulated user is 127.0.0.1: the per-client limits would measure only themselves.
    env.setdefault("GATEWAY_SEARCHES_PER_MINUTE", "1000000")
    env.setdefault("GATEWAY_IMAGES_PER_MINUTE", "1000000")
    env["PYTHONUNBUFFERED"] = "1"
    runner = subprocess.Popen(
        [sys.executable, "-m", "stack", "--logs", str(out / "logs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    front = None
    try:
        _wait_for_ready(runner, timeout=900)
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        pids = {name: listeners(port)[0] for name, port in ports.items()}
        target = gateway
        if use_proxy:
            front = proxy(out / "proxy", port=_free_port(), upstream=f"127.0.0.1:{ports['gateway']}", log_dir=out)
            front.start()
            front.wait_ready(timeout=30)
            assert front.process is not None
            pids["proxy"] = front.process.pid
            target = front.url
        records = _records_with_images(gateway)
        running = Running(pids, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}, target)
        idle = _rss(pids)
        load_before = [round(x, 2) for x in os.getloadavg()]
        demo = Path(env.get("STACK_DEMO_DIR", ROOT / "var" / "demo"))
        locust_env = env | {
            "BENCH_PHOTOS": str(demo / "images" / "photos"),
            "BENCH_RECORDS": ",".join(map(str, records)),
        }
        prefix = out / "locust"
        load = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
             "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{duration}s", "--host", target,
             "--csv", str(prefix), "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING"],
            cwd=ROOT, env=locust_env, stdout=(out / "locust.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        started = time.monotonic()
        peak = dict(idle)
        actions = list(SCENARIOS[scenario])
        while load.poll() is None:
            elapsed = time.monotonic() - started
            while actions and actions[0].at <= elapsed:
                action = actions.pop(0)
                running.log.append(f"{elapsed:.1f} s: {action.what}")
                action.do(running)
            for name, rss in _rss(pids).items():
                peak[name] = max(peak[name], rss)
            time.sleep(1.0)
        time.sleep(2.0)
        after = _rss(pids)
        kinds, errors = _read_stats(prefix)
        results = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "scenario": scenario,
            "actions": running.log,
            "users": users,
            "duration_s": duration,
            "proxy": use_proxy,
            "records_with_images": len(records),
            "machine": _machine(),
            "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "kinds": kinds,
            "errors": errors,
            "rss_mb": {name: {"idle": idle[name], "peak": peak[name], "after": after[name]} for name in pids},
        }
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text(_markdown(results))
        return results
    finally:
        if front is not None:
            front.stop()
        runner.send_signal(signal.SIGTERM)  # stops everything it started, as Ctrl-C does
        try:
            runner.wait(60)
        except subprocess.TimeoutExpired:
            runner.kill()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "load")
    parser.add_argument("--no-proxy", action="store_true", help="load the gateway directly, not through nginx")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    args = parser.parse_args()
    use_proxy = not args.no_proxy and nginx_available()
    results = run(args.users, args.duration, args.out, use_proxy, args.scenario)
    print(_markdown(results))
    print(f"written to {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
