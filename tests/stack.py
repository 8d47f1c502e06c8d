"""The four services as processes on 127.0.0.1, with a collection built by the builder command.

Shared by tests/e2e and tests/browser (each module gets its own stack)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from stack.demo_collection import generate_collection, write_manifest
from stack.demo_labels import write_species_labels
from stack.image_server import serve_in_thread
from stack.processes import ROOT, ServiceProcess, service, stop_all
from stack.tiny_model import TinyModel

PER_SPECIES = 3


@dataclass
class Stack:
    gateway: ServiceProcess
    embedder: ServiceProcess
    search: ServiceProcess
    fetcher: ServiceProcess
    rows: list[dict[str, Any]]
    images: Path
    logs: Path
    source: ThreadingHTTPServer  # the image source the collection's URLs point at
    embedders: list[ServiceProcess] = field(default_factory=list)  # every replica; `embedder` is the first
    searches: list[ServiceProcess] = field(default_factory=list)  # every replica; `search` is the first


@contextmanager
def running_stack(
    work: Path, tiny_model: TinyModel, gateway_env: dict[str, str] | None = None, replicas: int = 1
) -> Iterator[Stack]:
    """Generate a collection, serve its images, build it through the embedder, start the rest.

    `gateway_env`: GATEWAY_* settings on top of the services' URLs (fault tests tighten the bounds).
    `replicas`: processes each of the embedder and search run as, the gateway given all their URLs."""
    images, logs = work / "images", work / "logs"
    logs.mkdir()
    source, source_url = serve_in_thread(images)
    rows = generate_collection(images, per_species=PER_SPECIES, base_url=source_url)
    manifest = write_manifest(rows, images / "manifest.csv")
    # embedder, search, fetcher, gateway; then each further embedder and search replica, in pairs.
    ports = _free_ports(2 + 2 * replicas)
    processes: list[ServiceProcess] = []
    try:
        labels = write_species_labels(work / "labels", tiny_model)
        embedder_env = {**tiny_model.env(), "EMBEDDER_TREE_OF_LIFE_DIR": str(labels)}
        embedder = service("embedder", port=ports[0], env=embedder_env, log_dir=logs)
        processes.append(embedder)
        embedder.start()
        embedder.wait_ready()
        build = subprocess.run(
            [sys.executable, "-m", "collection", "build", "--manifest", str(manifest),
             "--embedder", embedder.url, "--out", str(work / "collection"), "--batch-size", "8"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert build.returncode == 0, build.stderr
        assert f"built {len(rows)} records (0 skipped)" in build.stdout
        embedders = [embedder] + [
            _replica(service("embedder", port=ports[2 + 2 * i], env=embedder_env, log_dir=logs), i)
            for i in range(1, replicas)
        ]
        search_env = {"SEARCH_DATA_DIR": str(work / "collection")}
        searches = [
            _replica(service("search", port=ports[1] if i == 0 else ports[3 + 2 * i], env=search_env, log_dir=logs), i)
            for i in range(replicas)
        ]
        fetcher_env = {"FETCHER_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8", "FETCHER_CACHE_DIR": str(work / "cache")}
        fetcher = service("fetcher", port=ports[2], env=fetcher_env, log_dir=logs)
        processes += [*embedders[1:], *searches, fetcher]
        for process in (*embedders[1:], *searches, fetcher):
            process.start()
        gateway = service(
            "gateway",
            port=ports[3],
            env={
                "GATEWAY_EMBEDDER_URL": ",".join(process.url for process in embedders),
                "GATEWAY_SEARCH_URL": ",".join(process.url for process in searches),
                "GATEWAY_FETCHER_URL": fetcher.url,
                **(gateway_env or {}),
            },
            log_dir=logs,
        )
        processes.append(gateway)
        gateway.start()
        for process in (*embedders[1:], *searches, fetcher, gateway):
            process.wait_ready()
        yield Stack(
            gateway, embedder, searches[0], fetcher, rows, images, logs, source, embedders=embedders, searches=searches
        )
    finally:
        stop_all(processes)
        source.shutdown()
        source.server_close()


def _replica(process: ServiceProcess, index: int) -> ServiceProcess:
    """The `index`-th replica of a service: the first keeps the service's log name, the others get their own."""
    if index and process.log_path is not None:
        process.log_path = process.log_path.with_name(f"{process.name}-{index}.log")
    return process


def _free_ports(count: int) -> list[int]:

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def read_until_ready(runner: subprocess.Popen[str], seconds: float = 240) -> list[str]:
    """The lines `make run`'s runner printed until its "Ready:" line (asserted), its end, or `seconds`."""
    output: list[str] = []
    assert runner.stdout is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = runner.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("Ready:"):
            break
    assert any(line.startswith("Ready:") for line in output), "".join(output)
    return output
