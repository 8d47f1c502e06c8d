"""The fetcher as a real process: killed with SIGKILL right after a fetch (or during one) and started
again, it still counts the bytes against the source's budget; a URL it cannot parse is a 400 that
leaves the caller's kept-alive connection open."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stack.processes import ServiceProcess, service
from tests.conftest import ImageFactory
from tests.sources import Route, Source

MAX_IMAGE_BYTES = 2_000_000


@pytest.fixture
def start_fetcher(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Callable[[], ServiceProcess]]:
    """Starts the fetcher on the same cache folder (and port) each time it is called."""
    port = free_port()
    env = {
        "FETCHER_CACHE_DIR": str(tmp_path / "cache"),
        "FETCHER_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
        "FETCHER_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "FETCHER_DOMAIN_POLICIES": json.dumps({"127.0.0.1": {"budgets": [{"bytes": 100_000_000, "seconds": 3600}]}}),
        "FETCHER_LOG_LEVEL": "INFO",
    }
    started: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        fetcher = service("fetcher", port=port, env=env, log_dir=tmp_path)
        fetcher.start()
        started.append(fetcher)
        fetcher.wait_ready(timeout=60)
        return fetcher

    yield start
    for fetcher in started:
        fetcher.stop(grace=5)


def _kill(fetcher: ServiceProcess) -> None:
    assert fetcher.process is not None
    fetcher.process.kill()  # SIGKILL: no shutdown code runs
    fetcher.process.wait(10)


def _budget_used(fetcher: ServiceProcess) -> int:
    stats = httpx.get(fetcher.url + "/v1/stats", timeout=10).json()
    listed = [d for d in stats["domains"] if d["domain"] == "127.0.0.1"]
    return int(listed[0]["budgets"][0]["used_bytes"]) if listed else 0  # listed once it has used some


def test_bytes_fetched_just_before_a_sigkill_still_count_after_a_restart(
    start_fetcher: Callable[[], ServiceProcess], source: Source, make_image: ImageFactory
) -> None:
    bodies = [make_image(400, 300, seed=i) for i in range(3)]
    urls = [source.add(f"/{i}.jpg", Route(body=body)) for i, body in enumerate(bodies)]
    fetched = 0
    for url, body in zip(urls, bodies, strict=True):  # three crash cycles, each right after a fetch
        fetcher = start_fetcher()
        assert _budget_used(fetcher) == fetched
        response = httpx.get(fetcher.url + "/v1/image", params={"url": url}, timeout=30)
        _kill(fetcher)
        assert response.status_code == 200
        fetched += len(body)
    fetcher = start_fetcher()
    assert _budget_used(fetcher) == fetched == sum(len(b) for b in bodies)


def test_a_request_in_flight_at_a_sigkill_counts_its_whole_reservation(
    start_fetcher: Callable[[], ServiceProcess], source: Source, make_image: ImageFactory
) -> None:
    url = source.add("/slow.jpg", Route(body=make_image(), delay=5.0))
    fetcher = start_fetcher()

    def ask() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the fetcher is killed under it
            httpx.get(fetcher.url + "/v1/image", params={"url": url}, timeout=30)

    asking = threading.Thread(target=ask)
    asking.start()
    deadline = time.monotonic() + 10
    while not source.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.requests, "the request never reached the source"
    _kill(fetcher)  # the request has left; nothing was received yet
    asking.join(10)
    fetcher = start_fetcher()
    # Not settled: the reservation (the most the source could have sent) stands.
    assert _budget_used(fetcher) == MAX_IMAGE_BYTES


def test_a_url_that_cannot_be_parsed_leaves_the_kept_alive_connection_open(
    start_fetcher: Callable[[], ServiceProcess], source: Source, make_image: ImageFactory
) -> None:
    url = source.add("/a.jpg", Route(body=make_image()))
    fetcher = start_fetcher()
    odd = [" http://exa mple.org/a.jpg", "http://xn--ls8h-/a.jpg", "http://[zz]/", f"\n{url}\t"]
    with httpx.Client(base_url=fetcher.url, timeout=30) as client:
        answers = [client.get("/v1/image", params={"url": text}) for text in [*odd, url]]
        sockets = {a.extensions["network_stream"].get_extra_info("client_addr") for a in answers}
    assert [a.status_code for a in answers] == [400, 400, 400, 200, 200]
    assert {a.json()["error"]["code"] for a in answers[:3]} == {"bad_url"}
    assert len(sockets) == 1  # one connection for all five: none was closed by the fetcher
