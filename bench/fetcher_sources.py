"""Three local image sources for the fetcher benchmark, run in a process of their own.

Each answers after a random 50-200 ms (time to first byte). One is rate-limited at 1 request per
second the way a real CDN is: a request that arrives sooner than a second after the previous one
gets 429 with Retry-After: 1. That server logs every request it sees, with its arrival time, so
the benchmark can show from the server's side whether anyone came too often.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGES_PER_SOURCE = 16


@dataclass(frozen=True)
class SourceSpec:
    name: str  # the host name the fetcher knows it by
    rate_limited: bool = False


def make_photo(seed: int, width: int = 1024, height: int = 768) -> bytes:
    """A photo-like JPEG (smooth colour fields, some texture), about the size of iNaturalist's `large`."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 32, width // 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    texture = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + texture, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=88)
    return out.getvalue()


def _handler(
    images: dict[str, bytes], spec: SourceSpec, log_path: Path | None, seed: int
) -> type[BaseHTTPRequestHandler]:
    rng = random.Random(seed)
    lock = threading.Lock()
    last_arrival = [float("-inf")]
    log = log_path.open("a", buffering=1) if log_path else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            arrived = time.monotonic()
            with lock:
                gap = arrived - last_arrival[0]
                last_arrival[0] = arrived
                delay = rng.uniform(0.05, 0.2)
                too_soon = spec.rate_limited and gap < 1.0
                if log is not None:
                    status = 429 if too_soon else 200 if self.path in images else 404
                    shown_gap = f"{gap:.3f}" if gap != float("inf") else "-"
                    log.write(f"{arrived:.6f} {time.time():.6f} {status} {shown_gap} {self.path}\n")
            if too_soon:
                self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                return
            time.sleep(delay)
            body = images.get(self.path)
            if body is None:
                self._send(404, b"not here", "text/plain")
            else:
                self._send(200, body, "image/jpeg")

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    return Handler


def serve(specs: list[SourceSpec], log_path: Path, conn: Connection) -> None:
    """Start one server per spec on 127.0.0.1, send back {name: port}, serve until told to stop."""
    servers = []
    ports = {}
    for index, spec in enumerate(specs):
        images = {f"/photos/{index * 100 + i}/large.jpg": make_photo(index * 100 + i) for i in range(IMAGES_PER_SOURCE)}
        handler = _handler(images, spec, log_path if spec.rate_limited else None, seed=index)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        ports[spec.name] = server.server_address[1]
    conn.send(ports)
    conn.recv()  # anything: stop
    for server in servers:
        server.shutdown()
        server.server_close()
