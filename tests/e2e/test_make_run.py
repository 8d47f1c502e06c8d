"""`make run`'s runner: builds the offline demo, serves it, and stops every process on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from stack.processes import ROOT

pytestmark = pytest.mark.e2e


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_runner_builds_the_demo_serves_it_and_stops_everything_on_ctrl_c(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    ports = {name: free_port() for name in ("GATEWAY", "EMBEDDER", "SEARCH", "FETCHER", "STACK_DEMO_SOURCE")}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEARCH_", "EMBEDDER_"))}
    env |= {f"{name}_PORT": str(port) for name, port in ports.items()}
    env |= {"STACK_DEMO_DIR": str(tmp_path / "demo"), "PYTHONUNBUFFERED": "1"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "stack", "--logs", str(tmp_path / "logs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert runner.stdout is not None
        while time.monotonic() < deadline:
            line = runner.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Ready:"):
                break
        assert any(line.startswith("Ready:") for line in output), "".join(output)
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        info = httpx.get(gateway + "/api/info", timeout=30).json()
        assert info["notice"].startswith("Offline demo") and info["index"]["vectors"] == 300
        photo = next((tmp_path / "demo" / "images" / "photos").glob("*/original.jpg")).read_bytes()
        found = httpx.post(gateway + "/api/search", files={"image": ("q.jpg", photo, "image/jpeg")}, timeout=60)
        assert found.status_code == 200 and found.json()["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert all(_listening(port) for port in ports.values())
    finally:
        runner.send_signal(signal.SIGINT)
        code = runner.wait(60)
        assert runner.stdout is not None
        runner.stdout.close()
    assert code == 0
    assert not any(_listening(port) for port in ports.values())
