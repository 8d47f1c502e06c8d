"""`make run`'s runner: builds the offline demo, serves it, and stops every process on Ctrl-C; refuses
to start on a taken port, naming its holder; counts readiness only from the process it started;
leaves the user's settings alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from stack.processes import ROOT, ServiceProcess, StartFailed
from tests.stack import read_until_ready

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
    env["FETCHER_CACHE_DIR"] = str(tmp_path / "my-cache")  # the user's setting, which the runner must keep
    runner = subprocess.Popen(
        [sys.executable, "-m", "stack", "--logs", str(tmp_path / "logs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        read_until_ready(runner)
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        info = httpx.get(gateway + "/api/info", timeout=30).json()
        assert info["notice"].startswith("Offline demo") and info["index"]["vectors"] == 300
        photo = next((tmp_path / "demo" / "images" / "photos").glob("*/original.jpg")).read_bytes()
        found = httpx.post(gateway + "/api/search", files={"image": ("q.jpg", photo, "image/jpeg")}, timeout=60)
        assert found.status_code == 200 and found.json()["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        shown = next(hit for hit in found.json()["hits"] if hit["thumbnail_url"])
        assert httpx.get(gateway + shown["thumbnail_url"], timeout=60).status_code == 200
        cached = [path for path in (tmp_path / "my-cache").rglob("*") if path.is_file()]
        assert cached, "the fetcher did not cache in the FETCHER_CACHE_DIR the user set"
        assert all(_listening(port) for port in ports.values())
        # The fetcher reached the demo's source (the thumbnail above), and may reach nothing else on this
        # machine: not the gateway on another port, not the source's port on another loopback address.
        fetcher = f"http://127.0.0.1:{ports['FETCHER']}/v1/image"
        for elsewhere in (f"http://127.0.0.1:{ports['GATEWAY']}/static/favicon.png",
                          f"http://127.0.0.2:{ports['STACK_DEMO_SOURCE']}/photos/x/original.jpg"):  # fmt: skip
            refused = httpx.get(fetcher, params={"url": elsewhere}, timeout=30)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "blocked", (
                elsewhere,
                refused.text,
            )
    finally:
        runner.send_signal(signal.SIGINT)
        code = runner.wait(60)
        assert runner.stdout is not None
        runner.stdout.close()
    assert code == 0
    assert not any(_listening(port) for port in ports.values())


def _runner_env(tmp_path: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEARCH_", "EMBEDDER_"))}
    env |= {f"{name}_PORT": str(port) for name, port in ports.items()}
    return env | {"STACK_DEMO_DIR": str(tmp_path / "demo"), "PYTHONUNBUFFERED": "1"}


def test_runner_refuses_a_taken_port_before_starting_anything_and_names_the_holder(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    ports = {name: free_port() for name in ("GATEWAY", "EMBEDDER", "SEARCH", "FETCHER", "STACK_DEMO_SOURCE")}
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports["SEARCH"]))
        held.listen()
        done = subprocess.run(
            [sys.executable, "-m", "stack", "--logs", str(tmp_path / "logs")],
            cwd=ROOT, env=_runner_env(tmp_path, ports), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    message = done.stdout + done.stderr
    assert f"port {ports['SEARCH']} (search, SEARCH_PORT) is in use by pid {os.getpid()}" in message, message
    assert "pytest" in message  # the holder's command line
    assert not (tmp_path / "demo").exists(), "the runner built the demo before checking its ports"
    assert not any(_listening(port) for name, port in ports.items() if name != "SEARCH")


def test_readiness_counts_only_from_the_process_just_started(tmp_path: Path, free_port: Callable[[], int]) -> None:
    port = free_port()

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    # An earlier run's process still answers on the port the new one will fail to take.
    with ThreadingHTTPServer(("127.0.0.1", port), Ready) as old:
        threading.Thread(target=old.serve_forever, daemon=True).start()
        images = tmp_path / "images"
        images.mkdir()
        new = ServiceProcess(
            "demo-source", "stack.image_server", port, args=["--dir", str(images), "--port", str(port)],
            log_path=tmp_path / "source.log", ready_path="/",
        )  # fmt: skip
        new.start()
        try:
            with pytest.raises(StartFailed, match=rf"port {port} is answered by pid {os.getpid()}|exited"):
                new.wait_ready(timeout=30)
        finally:
            new.stop()
            old.shutdown()
