"""A programmable HTTP server on 127.0.0.1 standing in for the world's image sources in tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the first byte
    trickle: float = 0.0  # seconds between chunks of 1 KiB
    drop_first: int = 0  # close the connection without an answer this many times first
    declare_length: bool = True  # False: no Content-Length; the body ends when the connection closes
    dropped: int = 0  # how many times it has dropped so far


@dataclass
class Source:
    base_url: str
    routes: dict[str, Route]
    requests: list[tuple[str, dict[str, str]]]
    folder: Path
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request, in order

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.base_url + path


def _handler(
    routes: dict[str, Route], requests: list[tuple[str, dict[str, str]]], arrivals: list[float] | None = None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if arrivals is not None:
                arrivals.append(time.monotonic())
            requests.append((self.path, dict(self.headers.items())))
            route = routes.get(self.path.split("?")[0])
            if route is None:
                route = Route(status=404, body=b"not here", content_type="text/plain")
            if route.dropped < route.drop_first:
                route.dropped += 1
                self.close_connection = True
                return
            time.sleep(route.delay)
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            if route.declare_length:
                self.send_header("Content-Length", str(len(route.body)))
            else:
                self.close_connection = True
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                if route.trickle:
                    for start in range(0, len(route.body), 1024):
                        self.wfile.write(route.body[start : start + 1024])
                        self.wfile.flush()
                        time.sleep(route.trickle)
                else:
                    self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@contextmanager
def start_source(folder: Path, host: str = "127.0.0.1", poll_interval: float = 0.5) -> Iterator[Source]:
    """`host`: another loopback address (127.0.0.2) when a test needs a source outside an allowlist.
    `poll_interval`: how often the server checks for shutdown (a stop waits up to this long)."""
    routes: dict[str, Route] = {}
    requests: list[tuple[str, dict[str, str]]] = []
    arrivals: list[float] = []
    server = ThreadingHTTPServer((host, 0), _handler(routes, requests, arrivals))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    try:
        yield Source(f"http://{host}:{server.server_address[1]}", routes, requests, folder, arrivals)
    finally:
        server.shutdown()
        server.server_close()
