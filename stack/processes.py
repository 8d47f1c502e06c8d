"""Start the services as local processes, wait until they are ready, and stop them all."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from stack.ports import describe, listeners, owns_port

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

# What each service runs and where: compose.yaml names the same commands, ports and health checks.
SERVICES: dict[str, tuple[str, int]] = {
    "embedder": ("services.embedder", 8001),
    "search": ("services.search", 8002),
    "fetcher": ("services.fetcher", 8003),
    "gateway": ("gateway", 8000),
}
READINESS_PATH = "/readyz"


class StartFailed(RuntimeError):
    """A service exited or never became ready; the message carries the end of its log."""


@dataclass
class ServiceProcess:
    name: str
    module: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)
    ready_path: str = READINESS_PATH
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    def start(self) -> None:
        prefix = self.name.upper()
        # The user's own HOST setting wins (the runner's url still reaches 0.0.0.0); the port is the one
        # this object was given, already read from the environment where the caller wanted that.
        env = {f"{prefix}_HOST": "127.0.0.1", **os.environ, f"{prefix}_PORT": str(self.port), **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = self.log_path.open("ab") if self.log_path else None
        try:
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, env=env,
                stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the runner only, which stops each child in order
            )  # fmt: skip
        finally:
            if log is not None:
                log.close()  # the child holds its own copy of the descriptor

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the process just started answers its readiness path with 200.

        An answer counts only while that process is alive and is the one listening on the port:
        a process left over from an earlier run on the same port would answer too.
        """
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartFailed(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                answered = httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                answered = False
            if answered:
                if owns_port(self.process.pid, self.port):
                    return
                others = [pid for pid in listeners(self.port) if pid != self.process.pid]
                if others:
                    raise StartFailed(
                        f"{self.name}: port {self.port} is answered by {describe(others[0])}, "
                        f"not by the process just started (pid {self.process.pid})"
                    )
            time.sleep(0.2)
        raise StartFailed(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def service(
    name: str, *, port: int | None = None, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> ServiceProcess:
    module, default_port = SERVICES[name]
    port = port or int(os.environ.get(f"{name.upper()}_PORT", default_port))
    log_path = log_dir / f"{name}.log" if log_dir else None
    return ServiceProcess(name, module, port, env or {}, log_path)


def stop_all(processes: list[ServiceProcess]) -> None:
    for process in reversed(processes):
        process.stop()
