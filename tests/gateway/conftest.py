"""The services the gateway calls, served for real on 127.0.0.1 (uvicorn in a thread) from their own apps."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


@contextmanager
def serving(app: FastAPI, *, ready_path: str = "/readyz", timeout: float = 60.0) -> Iterator[str]:
    """Serve `app` on a free port of 127.0.0.1 until the block ends; yields its base URL once `ready_path`
    answers 200. The socket is bound here and handed to uvicorn, so no other process can take the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"serve-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise AssertionError(f"{app.title} did not become ready on port {port}")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
