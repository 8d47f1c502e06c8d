"""Who holds a TCP port: checked before the runner starts anything, and after a readiness answer.

Without these, a second `make run` while a first still holds the ports reached the old processes,
reported every service ready, and then died when one could not bind.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import NamedTuple

import psutil

logger = logging.getLogger(__name__)


class PortInUse(RuntimeError):
    """A port the runner needs is taken; the message names the port, its user and the process."""


class Claim(NamedTuple):
    """A port a process of the stack will listen on, and the variable that moves it."""

    name: str
    host: str
    port: int
    variable: str


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (with SO_REUSEADDR, as uvicorn and nginx bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def listeners(port: int) -> list[int]:
    """Ids of the processes listening on TCP `port` (empty when only other users' processes do,
    whose sockets this user cannot map to a process)."""
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return []
    return sorted(
        {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    )


def describe(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return f"pid {pid} ({' '.join(process.cmdline()) or process.name()})"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {pid}"


def holder(port: int) -> str:
    """The process(es) listening on `port`, in words."""
    pids = listeners(port)
    return ", ".join(describe(pid) for pid in pids) if pids else "a process this user cannot see"


def check_free(claims: list[Claim]) -> None:
    """Raise PortInUse naming every taken port, e.g. `port 8001 (embedder, EMBEDDER_PORT) is in use
    by pid 4242 (python -m services.embedder)`."""
    taken = [
        f"port {c.port} ({c.name}, {c.variable}) is in use by {holder(c.port)}"
        for c in claims
        if not is_free(c.port, c.host)
    ]
    if taken:
        raise PortInUse(
            "cannot start: "
            + "; ".join(taken)
            + ". Stop what holds it (an earlier `make run`?) or choose another port with the variable named."
        )


def owns_port(pid: int, port: int) -> bool:
    """Whether process `pid` (or one of its children, as nginx's workers) listens on TCP `port`."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in family:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return True
    return False
