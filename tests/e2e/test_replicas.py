"""Two embedders and two search services as processes behind one gateway: calls reach every replica (as
each replica's own /metrics counts them), one replica of each killed with SIGKILL under a stream of
searches costs the user no failed request, and a replica started again takes calls again."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.processes import ServiceProcess
from stack.tiny_model import TinyModel
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

GATEWAY_ENV = {
    "GATEWAY_SEARCHES_PER_MINUTE": "100000",
    # Short back-offs, so a replica started again is tried within a second (the default ceiling is 30 s).
    "GATEWAY_REPLICA_BACKOFF": "0.2",
    "GATEWAY_REPLICA_MAX_BACKOFF": "1",
}
EMBEDDER_ROUTES = ("/v1/embed/text", "/v1/classify")
SEARCH_ROUTES = ("/v1/search",)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("replicas"), tiny_model, GATEWAY_ENV, replicas=2) as running:
        yield running


def served(process: ServiceProcess, routes: tuple[str, ...]) -> int:
    """Calls on `routes` the replica answered with 200, from its own /metrics (since it started)."""
    text = httpx.get(process.url + "/metrics", timeout=10).text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "http_requests_total"
            and sample.labels.get("route") in routes
            and sample.labels.get("status") == "200"
        )
    )


def _search(client: httpx.Client, stack: Stack, n: int) -> tuple[int, str]:
    # A text of its own each time, so the gateway's query cache does not spare the embedder the call.
    response = client.post(stack.gateway.url + "/api/search", json={"text": f"Danaus plexippus {n}", "top_n": 3})
    return response.status_code, response.text[:300]


def test_calls_reach_both_replicas_of_each_service(stack: Stack) -> None:
    before = [served(p, EMBEDDER_ROUTES) for p in stack.embedders] + [served(p, SEARCH_ROUTES) for p in stack.searches]
    with httpx.Client(timeout=30) as client:
        answers = [_search(client, stack, n) for n in range(20)]
    assert all(status == 200 for status, _ in answers), answers
    after = [served(p, EMBEDDER_ROUTES) for p in stack.embedders] + [served(p, SEARCH_ROUTES) for p in stack.searches]
    embedders = [b - a for a, b in zip(before[:2], after[:2], strict=True)]
    searches = [b - a for a, b in zip(before[2:], after[2:], strict=True)]
    # 20 searches: 20 embeds and 20 classifies over two embedders, 20 searches over two search replicas;
    # one after another, so round-robin shares them out about evenly.
    assert sum(embedders) == 40 and min(embedders) >= 12, embedders
    assert sum(searches) == 20 and min(searches) >= 6, searches
    internal = httpx.get(stack.gateway.url + "/internal/health", timeout=10).json()
    for name, processes in (("embedder", stack.embedders), ("search", stack.searches)):
        replicas = internal["services"][name]["replicas"]
        assert [(r["url"], r["ready"]) for r in replicas] == [(p.url, True) for p in processes]


class Stream:
    """Searches sent one after another by a few threads until stopped; every answer kept, in order."""

    def __init__(self, stack: Stack, threads: int = 2) -> None:
        self.stack = stack
        self.answers: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(threads)
        self.count = 0
        self.lock = threading.Lock()
        self.begun = time.monotonic()
        self.workers = [self.pool.submit(self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                with self.lock:
                    self.count += 1
                    n = 1000 + self.count
                try:
                    status, text = _search(client, self.stack, n)
                except httpx.HTTPError as exc:  # the gateway itself must never drop us
                    status, text = 0, repr(exc)
                with self.lock:
                    self.answers.append((time.monotonic() - self.begun, status, text))

    def wait_for(self, answers: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        start = len(self.answers)
        while len(self.answers) < start + answers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.answers) >= start + answers, f"{len(self.answers) - start} answers in {seconds} s"

    def end(self) -> list[tuple[float, int, str]]:
        self.stop.set()
        for worker in self.workers:
            worker.result(timeout=60)
        self.pool.shutdown()
        return self.answers


def _wait_until_served(processes: list[tuple[ServiceProcess, tuple[str, ...]]], seconds: float) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while True:
        counts = {f"{p.name}:{p.port}": served(p, routes) for p, routes in processes}
        if all(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def test_killing_one_replica_of_each_mid_stream_fails_no_search_and_the_restarted_ones_take_calls(
    stack: Stack,
) -> None:
    embedder, search = stack.embedders[1], stack.searches[1]
    assert embedder.process is not None and search.process is not None
    stream = Stream(stack)
    try:
        stream.wait_for(10, 60)
        killed_at = time.monotonic() - stream.begun
        os.kill(embedder.process.pid, signal.SIGKILL)
        os.kill(search.process.pid, signal.SIGKILL)
        embedder.process.wait(10)
        search.process.wait(10)
        stream.wait_for(15, 60)  # searches go on, on the replicas left
        restarted_at = time.monotonic() - stream.begun
        for process in (embedder, search):
            process.start()
        for process in (embedder, search):
            process.wait_ready(90)
        # Fresh processes: whatever their /metrics count came after the restart.
        counts = _wait_until_served([(embedder, EMBEDDER_ROUTES), (search, SEARCH_ROUTES)], 30)
    finally:
        answers = stream.end()
    failed = [answer for answer in answers if answer[1] != 200]
    assert not failed, failed[:5]
    assert any(at > killed_at for at, _, _ in answers) and any(at > restarted_at for at, _, _ in answers)
    assert all(counts.values()), f"the restarted replicas took no calls: {counts}"
    health = httpx.get(stack.gateway.url + "/internal/health", timeout=10).json()
    assert health["status"] == "ok"
    # The kills were felt: the gateway found the killed replicas refusing or dropping connections.
    text = httpx.get(stack.gateway.url + "/metrics", timeout=10).text
    felt = {
        sample.labels["replica"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_replica_requests_total"
        and sample.labels["outcome"] in ("connect_failed", "dropped")
        and sample.value > 0
    }
    assert {embedder.url, search.url} <= felt, felt
    print(
        f"\n{len(answers)} searches, none failed; one embedder and one search replica killed at {killed_at:.1f} s, "
        f"started again at {restarted_at:.1f} s; calls they answered after the restart: {counts}"
    )
