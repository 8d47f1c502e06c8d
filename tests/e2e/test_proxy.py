"""The reverse proxy (Debian's nginx, from deploy/nginx's template) in front of the real stack:
slow clients cut off while others are served, the body limit, what the public can reach, and
rate limits keyed on the address the proxy saw rather than on a header the client writes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.proxy import DEFAULTS, ProxyProcess, nginx_available, proxy, variables
from stack.tiny_model import TinyModel
from tests.stack import Stack, _free_ports, running_stack

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 3.0  # seconds; compose uses DEFAULTS["PROXY_HEADER_TIMEOUT"], shortened so the test is quick
IMAGES_PER_MINUTE = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[Stack]:
    if not nginx_available():
        pytest.skip("nginx is missing: install Debian's nginx package (scripts/install.sh does)")
    gateway_env = {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1", "GATEWAY_IMAGES_PER_MINUTE": str(IMAGES_PER_MINUTE)}
    with running_stack(tmp_path_factory.mktemp("stack"), tiny_model, gateway_env=gateway_env) as running:
        yield running


@pytest.fixture(scope="module")
def front(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    (port,) = _free_ports(1)
    process = proxy(
        tmp_path_factory.mktemp("proxy"),
        port=port,
        upstream=f"127.0.0.1:{stack.gateway.port}",
        log_dir=stack.logs,
        PROXY_HEADER_TIMEOUT=f"{HEADER_TIMEOUT:.0f}s",
    )
    process.start()
    try:
        process.wait_ready(timeout=30)
        yield process
    finally:
        process.stop()


def _client_from(address: str) -> httpx.Client:
    """A client whose connections leave from `address` (any 127.x.y.z is this machine's loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _published(stack: Stack, count: int) -> list[int]:
    return [i for i, row in enumerate(stack.rows) if row["url"]][:count]


def _trickle_headers(port: int, closed_after: list[float], sent: list[int], stop: threading.Event) -> None:
    """A request's headers, one byte every 0.5 s, until the server closes the connection."""
    request = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + b"s" * 200 + b"\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.5)
        for index in range(len(request)):
            if stop.is_set():
                return
            try:
                sock.sendall(request[index : index + 1])
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue  # nothing to read yet: the connection is still open
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            return
    sent.append(index)
    closed_after.append(time.monotonic() - started)


def test_slow_header_clients_are_cut_off_while_others_are_served(front: ProxyProcess) -> None:
    closed_after: list[float] = []
    sent: list[int] = []
    stop = threading.Event()
    slow = [
        threading.Thread(target=_trickle_headers, args=(front.port, closed_after, sent, stop), daemon=True)
        for _ in range(20)
    ]
    for thread in slow:
        thread.start()
    try:
        served: list[float] = []
        with httpx.Client(timeout=10) as client:
            while any(thread.is_alive() for thread in slow) and len(served) < 200:
                started = time.monotonic()
                assert client.get(front.url + "/api/health").status_code in (200, 503)
                served.append(time.monotonic() - started)
                time.sleep(0.1)
        for thread in slow:
            thread.join(HEADER_TIMEOUT * 3)
    finally:
        stop.set()
    assert len(closed_after) == len(slow), "a slow client was never cut off"
    # Cut off at the header timeout, long before its ~230 header bytes at 2 a second (~115 s) were in.
    assert all(HEADER_TIMEOUT - 0.5 <= after <= HEADER_TIMEOUT + 2.5 for after in closed_after), closed_after
    assert max(sent) < 30
    assert len(served) >= 10 and max(served) < 2.0, served


def test_a_body_over_the_limit_is_refused_by_the_proxy_in_the_api_error_shape(front: ProxyProcess) -> None:
    limit = int(DEFAULTS["PROXY_MAX_BODY_BYTES"])
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {limit + 1}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "too_large"


def test_metrics_and_internal_health_stay_inside_and_public_health_names_no_address(
    stack: Stack, front: ProxyProcess
) -> None:
    for path in ("/metrics", "/internal/health"):
        assert httpx.get(front.url + path, timeout=10).status_code == 404, path
        assert httpx.get(stack.gateway.url + path, timeout=10).status_code == 200, path  # on the inside
    public = httpx.get(front.url + "/api/health", timeout=10)
    assert public.status_code == 200 and public.json()["status"] == "ok"
    assert set(public.json()["services"]) == {"embedder", "search", "fetcher"}
    assert "127.0.0.1" not in public.text and "url" not in public.text
    inside = httpx.get(stack.gateway.url + "/internal/health", timeout=10).json()
    assert inside["services"]["search"]["url"] == stack.search.url


def test_answers_through_the_proxy_carry_the_hardening_headers(front: ProxyProcess) -> None:
    for path in ("/", "/static/app.js", "/api/health", "/api/records/999999999"):
        headers = httpx.get(front.url + path, timeout=10).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
        assert "server" not in headers or "nginx/" not in headers["server"], "the proxy hides its version"


def test_a_client_writing_its_own_x_forwarded_for_is_still_rate_limited(stack: Stack, front: ProxyProcess) -> None:
    records = _published(stack, IMAGES_PER_MINUTE + 2)
    statuses = []
    with _client_from("127.0.0.2") as client:
        for n, record in enumerate(records):
            # A new made-up address each time: keyed on it, the client would never reach the limit.
            spoofed = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
            statuses.append(client.get(f"{front.url}/api/images/{record}?size=thumb", headers=spoofed).status_code)
    assert statuses[:IMAGES_PER_MINUTE] == [200] * IMAGES_PER_MINUTE
    assert set(statuses[IMAGES_PER_MINUTE:]) == {429}
    # Another client (another address, as the proxy saw it) has its own allowance.
    with _client_from("127.0.0.3") as other:
        assert other.get(f"{front.url}/api/images/{records[0]}?size=thumb").status_code == 200


def test_proxy_config_is_the_template_with_only_its_values_filled_in(front: ProxyProcess) -> None:
    assert front.config is not None
    rendered = (Path(front.config).parent / "default.conf").read_text()
    assert variables(rendered) == set()
    assert f"client_header_timeout {HEADER_TIMEOUT:.0f}s;" in rendered
    assert f"client_max_body_size {DEFAULTS['PROXY_MAX_BODY_BYTES']};" in rendered
    assert "$proxy_add_x_forwarded_for" in rendered  # nginx's own variables untouched


def test_connections_past_the_per_client_limit_are_refused_while_others_are_served(front: ProxyProcess) -> None:
    limit = int(DEFAULTS["PROXY_CONNECTIONS_PER_CLIENT"])
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    held: list[socket.socket] = []
    try:
        # Requests whose bodies are still coming in count as open; each sends its headers and one byte.
        for _ in range(limit):
            sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
            sock.sendall(head + b"{")
            held.append(sock)
        time.sleep(0.5)
        with _client_from("127.0.0.1") as client:
            refused = client.get(front.url + "/api/health")
        with _client_from("127.0.0.4") as other:
            served = other.get(front.url + "/api/health")
    finally:
        for sock in held:
            sock.close()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_connections"
    assert served.status_code in (200, 503) and "error" not in served.json()
