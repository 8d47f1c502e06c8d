"""The gateway's replicas: which one takes a call, which are left out and for how long (pure bookkeeping,
property-tested), and calls spread, retried and resolved against real HTTP servers on 127.0.0.x."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.app import create_app
from gateway.replicas import Replica, ReplicaSet, ReplicaSpec, Upstream, resolve_addresses
from gateway.settings import GatewaySettings, base_urls
from services.common.http import make_async_client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _set(count: int, clock: Clock, backoff: float = 1.0, max_backoff: float = 8.0) -> ReplicaSet:
    specs = [ReplicaSpec(f"http://10.0.0.{i}:8001") for i in range(count)]
    return ReplicaSet(specs, backoff=backoff, max_backoff=max_backoff, clock=clock)


# --- pure bookkeeping ---------------------------------------------------------------------------------------

_events = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.integers(0, 4)),
        st.tuples(st.just("ok"), st.integers(0, 4)),
        st.tuples(st.just("wait"), st.floats(0, 20)),
        st.tuples(st.just("pick"), st.booleans()),  # True: the call stays in flight
        st.tuples(st.just("finish"), st.integers(0, 4)),
    ),
    max_size=80,
)


@given(count=st.integers(1, 5), events=_events)
def test_a_down_replica_is_never_picked_while_one_is_up(count: int, events: list[tuple[str, object]]) -> None:
    clock = Clock()
    replicas = _set(count, clock)
    members = list(replicas)
    in_flight: list[Replica] = []
    for kind, arg in events:
        if kind == "fail":
            replicas.failed(members[int(arg) % count], "refused")  # type: ignore[call-overload]
        elif kind == "ok":
            replicas.succeeded(members[int(arg) % count])  # type: ignore[call-overload]
        elif kind == "wait":
            clock.now += float(arg)  # type: ignore[arg-type]
        elif kind == "finish" and in_flight:
            replicas.end(in_flight.pop(int(arg) % len(in_flight)), "answered")  # type: ignore[call-overload]
        elif kind == "pick":
            up = [r for r in members if not r.is_down(clock.now)]
            chosen = replicas.pick()
            assert chosen is not None
            if up:
                assert chosen in up
                # Least outstanding among the up ones.
                assert chosen.outstanding == min(r.outstanding for r in up)
            else:
                assert chosen.down_until == min(r.down_until for r in members)
            replicas.begin(chosen)
            if arg:
                in_flight.append(chosen)
            else:
                replicas.end(chosen, "answered")


@given(count=st.integers(1, 6), calls=st.integers(0, 200))
def test_calls_one_after_another_spread_evenly(count: int, calls: int) -> None:
    replicas = _set(count, Clock())
    for _ in range(calls):
        chosen = replicas.pick()
        assert chosen is not None
        replicas.begin(chosen)
        replicas.end(chosen, "answered")
    counts = [r.requests["answered"] for r in replicas]
    assert sum(counts) == calls and max(counts) - min(counts) <= 1


@given(count=st.integers(1, 6), calls=st.integers(0, 60))
def test_calls_in_flight_together_spread_evenly(count: int, calls: int) -> None:
    replicas = _set(count, Clock())
    for _ in range(calls):
        chosen = replicas.pick()
        assert chosen is not None
        replicas.begin(chosen)
    in_flight = [r.outstanding for r in replicas]
    assert max(in_flight) - min(in_flight) <= 1


@given(down=st.sets(st.integers(0, 3), max_size=3), calls=st.integers(1, 40))
def test_calls_skip_down_replicas_and_spread_over_the_rest(down: set[int], calls: int) -> None:
    clock = Clock()
    replicas = _set(4, clock)
    members = list(replicas)
    for i in down:
        replicas.failed(members[i], "refused")
    for _ in range(calls):
        chosen = replicas.pick()
        assert chosen is not None and members.index(chosen) not in down
        replicas.begin(chosen)
        replicas.end(chosen, "answered")
    counts = [r.requests["answered"] for i, r in enumerate(members) if i not in down]
    assert max(counts) - min(counts) <= 1


def test_back_off_doubles_with_each_failure_in_a_row_up_to_the_ceiling_and_ends_at_a_good_answer() -> None:
    clock = Clock()
    replicas = _set(2, clock, backoff=0.5, max_backoff=3.0)
    first, second = list(replicas)
    assert [replicas.failed(first, "refused") for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert first.is_down(clock.now) and replicas.pick() is second and replicas.pick() is second
    clock.now += 3.0
    assert not first.is_down(clock.now)  # due back: tried again, as a probe
    replicas.failed(first, "refused")
    assert first.down_until - clock.now == 3.0  # still failing: the back-off stays at its ceiling
    replicas.succeeded(first)
    assert not first.is_down(clock.now) and replicas.failed(first, "refused") == 0.5


def test_when_every_replica_is_down_the_one_due_back_first_is_tried() -> None:
    clock = Clock()
    replicas = _set(3, clock)
    a, b, c = list(replicas)
    for replica, times in ((a, 3), (b, 1), (c, 2)):
        for _ in range(times):
            replicas.failed(replica, "refused")
    assert replicas.pick() is b
    assert replicas.pick(exclude={b}) is c
    assert replicas.pick(exclude={a, b, c}) is None


def test_resolving_again_keeps_the_state_of_replicas_still_there() -> None:
    clock = Clock()
    replicas = _set(2, clock)
    kept, gone = list(replicas)
    replicas.failed(kept, "refused")
    replicas.update([ReplicaSpec(kept.url), ReplicaSpec("http://10.0.0.9:8001")])
    assert [r.url for r in replicas] == [kept.url, "http://10.0.0.9:8001"]
    assert next(iter(replicas)) is kept and kept.is_down(clock.now) and gone not in list(replicas)


# --- settings -----------------------------------------------------------------------------------------------

_hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    _hosts,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    st.sampled_from(["", "/", "/embedder", "/api/v1/"]),
)


def _same_replica(url: str) -> tuple[str, str, int, str]:
    """Two URLs for one replica (`http://a` and `http://a:80/`) are one entry: a list never holds both."""
    parts = urlsplit(url)
    return (
        parts.scheme,
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
        parts.path.rstrip("/"),
    )


@given(urls=st.lists(_urls, min_size=1, max_size=5, unique_by=_same_replica))
def test_a_comma_separated_list_of_base_urls_is_read_as_replicas(urls: list[str]) -> None:
    settings = GatewaySettings(embedder_url=",".join(urls), search_url=" , ".join(urls))
    expected = [url.rstrip("/") for url in urls]
    assert settings.embedder_urls == expected and settings.search_urls == expected
    assert base_urls(settings.embedder_url) == expected


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("embedder_url", "ftp://embedder:8001", "is not an http(s) base URL"),
        ("search_url", "http://a:8002,,http://b:8002", "is not an http(s) base URL"),
        ("search_url", "http://a:8002 http://b:8002", "is not an http(s) base URL"),
        ("embedder_url", "http://a:99999", "is not an http(s) base URL"),
        ("embedder_url", "http://a:8001/?x=1", "is not an http(s) base URL"),
        ("embedder_url", "http://a:8001,http://a:8001/", "listed twice"),
        # The same replica spelled twice: a default port written out, the scheme or host in capitals.
        ("embedder_url", "http://a:80,http://a", "listed twice"),
        ("search_url", "https://a,https://a:443/", "listed twice"),
        ("search_url", "http://a:8002,HTTP://A:8002", "listed twice"),
        ("fetcher_url", "http://a:8003,http://b:8003", "one fetcher process owns the per-domain"),
    ],
)
def test_a_replica_list_that_cannot_be_read_is_refused_naming_the_entry(field: str, value: str, words: str) -> None:
    with pytest.raises(ValidationError) as refused:
        GatewaySettings(**{field: value})
    assert words in str(refused.value) and field in str(refused.value)


# --- real HTTP ----------------------------------------------------------------------------------------------


@dataclass
class Replicas:
    """Small HTTP servers standing for a service's replicas; each records the Host header of every call."""

    servers: list[ThreadingHTTPServer] = field(default_factory=list)
    seen: list[list[str]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)  # "ok", "503" or "drop"

    def url(self, i: int) -> str:
        host, port = self.servers[i].server_address[:2]
        return f"http://{host}:{port}"


def _handler(seen: list[str], modes: list[str], index: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            mode = modes[index]
            if mode == "drop":  # the connection closed under the call, nothing answered
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            seen.append(self.headers.get("Host", ""))
            if mode == "stall":  # a SIGSTOPped process: the connection is accepted, nothing answers in time
                time.sleep(1.5)
            status = 503 if mode.startswith("503") else 200
            body = json.dumps({"replica": index, "reason": "loading"}).encode()
            if mode.startswith("503 "):  # a service's own error answer, with its code (and "code resource")
                code, _, resource = mode[4:].partition(" ")
                error = {"code": code, "message": f"replica {index}"}
                if resource:
                    error["details"] = {"resource": resource}
                body = json.dumps({"error": error}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def replicas_on(addresses: list[str], same_port: bool = False) -> Iterator[Replicas]:
    running = Replicas()
    port = 0
    try:
        for i, address in enumerate(addresses):
            running.seen.append([])
            running.modes.append("ok")
            server = ThreadingHTTPServer((address, port), _handler(running.seen[i], running.modes, i))
            server.daemon_threads = True
            if same_port:
                port = int(server.server_address[1])
            threading.Thread(target=server.serve_forever, daemon=True).start()
            running.servers.append(server)
        yield running
    finally:
        for server in running.servers:
            server.shutdown()
            server.server_close()


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens there


def _calls(
    upstream: Upstream, count: int, path: str = "/v1/thing", *, cheap: bool = False, read: float = 5
) -> list[int]:
    """`count` calls one after another through `upstream`; the replica index each answer came from (0 - status
    for an error answer, -1 for a time-out)."""

    async def run() -> list[int]:
        client = make_async_client(connect=2, read=read, max_connections=8, user_agent="test")
        async with client:

            async def send(replica: Replica) -> httpx.Response:
                url, host, extensions = replica.target(path)
                return await client.get(url, headers=host, extensions=extensions)

            answers = []
            for _ in range(count):
                try:
                    answer = await upstream.call(send, cheap=cheap)
                except httpx.TimeoutException:
                    answers.append(-1)
                    continue
                answers.append(answer.json()["replica"] if answer.status_code == 200 else -answer.status_code)
            return answers

    return asyncio.run(run())


def _upstream(urls: list[str], **kwargs: object) -> Upstream:
    return Upstream("embedder", urls, backoff=kwargs.pop("backoff", 5.0), max_backoff=30.0, **kwargs)  # type: ignore[arg-type]


def test_calls_reach_every_listed_replica_evenly() -> None:
    with replicas_on(["127.0.0.1", "127.0.0.1", "127.0.0.1"]) as running:
        answers = _calls(_upstream([running.url(i) for i in range(3)]), 30)
    assert Counter(answers) == {0: 10, 1: 10, 2: 10}
    assert [len(seen) for seen in running.seen] == [10, 10, 10]


def test_a_refused_replica_is_left_out_and_no_call_fails() -> None:
    with replicas_on(["127.0.0.1"]) as running:
        upstream = _upstream([_refused_url(), running.url(0)])
        answers = _calls(upstream, 12)
    assert answers == [0] * 12
    dead = next(iter(upstream.replicas))
    # Tried once, then left out for its back-off: not once per call.
    assert dead.requests == {"connect_failed": 1} and dead.reason and "could not connect" in dead.reason


def test_a_replica_dropping_the_connection_or_answering_503_is_retried_on_another() -> None:
    with replicas_on(["127.0.0.1", "127.0.0.1", "127.0.0.1"]) as running:
        running.modes[0] = "drop"
        running.modes[1] = "503"
        upstream = _upstream([running.url(i) for i in range(3)])
        answers = _calls(upstream, 9)
    assert answers == [2] * 9
    dropped, unavailable, _ = list(upstream.replicas)
    assert dropped.requests["dropped"] >= 1 and "dropped the connection" in str(dropped.reason)
    assert unavailable.requests == {"unavailable": 1} and "503" in str(unavailable.reason)


def test_a_503_for_one_resource_sends_the_call_elsewhere_but_leaves_the_replica_in() -> None:
    """The taxon names not loaded on one search replica: its searches still work, so it is not left out."""
    with replicas_on(["127.0.0.1", "127.0.0.1"]) as running:
        running.modes[0] = "503 metadata_unavailable"
        upstream = _upstream([running.url(0), running.url(1)], backoff=30.0)
        answers = _calls(upstream, 4)
        resource, other = list(upstream.replicas)
        assert answers == [1, 1, 1, 1]
        assert resource.requests["unavailable"] >= 2  # asked again: not left out for 30 s
        assert resource.reason is None and other.requests["answered"] == 4
        running.modes[0] = "503 not_ready"
        _calls(upstream, 4)
        assert resource.reason is not None and "not_ready" in resource.reason  # loading: left out
    with replicas_on(["127.0.0.1"]) as running:
        running.modes[0] = "503 metadata_unavailable"
        assert _calls(_upstream([running.url(0)]), 2) == [-503, -503]  # alone, its 503 is passed on


def test_a_replica_still_loading_one_resource_stays_in() -> None:
    """The taxon names loading after the search service is ready: not_ready for them alone."""
    with replicas_on(["127.0.0.1", "127.0.0.1"]) as running:
        running.modes[0] = "503 not_ready taxon_names"
        upstream = _upstream([running.url(0), running.url(1)], backoff=30.0)
        assert _calls(upstream, 4) == [1, 1, 1, 1]
        loading, _ = list(upstream.replicas)
        assert loading.reason is None and loading.requests["unavailable"] >= 2


def test_a_stalled_replica_is_left_out_after_one_cheap_call_times_out() -> None:
    """A SIGSTOPped search: its /v1/stats (cheap) times out once, then calls go to the live replica only."""
    with replicas_on(["127.0.0.1", "127.0.0.1"]) as running:
        running.modes[0] = "stall"
        upstream = _upstream([running.url(i) for i in range(2)], backoff=30.0)
        answers = _calls(upstream, 8, cheap=True, read=0.5)
    stalled, live = list(upstream.replicas)
    assert answers.count(-1) <= 1 and answers.count(1) >= 7
    assert stalled.requests == {"timeout": 1} and "did not answer a cheap call in time" in str(stalled.reason)
    assert live.requests["answered"] >= 7


def test_a_slow_answer_to_an_ordinary_call_leaves_the_replica_up() -> None:
    """A search may take long: its time-out is the caller's answer, not a reason to leave the replica out."""
    with replicas_on(["127.0.0.1", "127.0.0.1"]) as running:
        running.modes[0] = "stall"
        upstream = _upstream([running.url(i) for i in range(2)], backoff=30.0)
        answers = _calls(upstream, 4, read=0.5)
    stalled, _ = list(upstream.replicas)
    assert answers.count(-1) == 2 and answers.count(1) == 2  # taken in turn: the slow one stays in
    assert stalled.requests == {"timeout": 2} and stalled.reason is None


def test_only_when_every_replica_is_down_does_the_call_fail() -> None:
    upstream = _upstream([_refused_url(), _refused_url()])
    with pytest.raises(httpx.ConnectError):
        _calls(upstream, 1)
    assert [r.requests["connect_failed"] for r in upstream.replicas] == [1, 1]
    with replicas_on(["127.0.0.1"]) as running:
        running.modes[0] = "503"
        assert _calls(_upstream([running.url(0)]), 2) == [-503, -503]  # one replica's own 503 is passed on


def test_a_replica_back_from_its_back_off_takes_calls_again() -> None:
    with replicas_on(["127.0.0.1", "127.0.0.1"]) as running:
        running.modes[0] = "503"
        upstream = _upstream([running.url(0), running.url(1)], backoff=0.2)
        assert _calls(upstream, 4) == [1, 1, 1, 1]
        running.modes[0] = "ok"
        asyncio.run(asyncio.sleep(0.25))
        assert sorted(_calls(upstream, 4)) == [0, 0, 1, 1]


def _fake_dns(table: dict[str, list[str]]) -> Callable[[str, int], object]:
    """The name service, the edge of the world: a table instead of the system's resolver."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def test_a_name_resolving_to_several_addresses_spreads_over_them_with_its_host_header() -> None:
    with replicas_on(["127.0.0.1", "127.0.0.2"], same_port=True) as running:
        port = running.servers[0].server_address[1]
        table = {"embedder": ["127.0.0.1", "127.0.0.2"]}
        upstream = _upstream([f"http://embedder:{port}"], resolver=_fake_dns(table))
        asyncio.run(upstream.refresh())
        assert [r.url for r in upstream.replicas] == [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
        assert sorted(_calls(upstream, 6)) == [0, 0, 0, 1, 1, 1]
        # A replica gone from the name's answer (a pod deleted) takes no more calls; a name that stops
        # resolving keeps the addresses it had.
        table["embedder"] = ["127.0.0.2"]
        asyncio.run(upstream.refresh())
        assert _calls(upstream, 3) == [1, 1, 1]
        del table["embedder"]
        asyncio.run(upstream.refresh())
        assert [r.url for r in upstream.replicas] == [f"http://127.0.0.2:{port}"]
    assert running.seen[0] == [f"embedder:{port}"] * 3 and running.seen[1] == [f"embedder:{port}"] * 6


def test_the_systems_resolver_turns_a_name_into_addresses_called_with_the_name_as_host() -> None:
    assert asyncio.run(resolve_addresses("localhost", 80)) and "127.0.0.1" in asyncio.run(
        resolve_addresses("localhost", 80)
    )
    with replicas_on(["127.0.0.1"]) as running:
        port = running.servers[0].server_address[1]
        upstream = _upstream([f"http://localhost:{port}"])
        asyncio.run(upstream.refresh())
        assert f"http://127.0.0.1:{port}" in [r.url for r in upstream.replicas]
        assert 0 in _calls(upstream, 2)
    assert set(running.seen[0]) == {f"localhost:{port}"}


def test_an_address_or_a_name_not_to_resolve_is_one_replica_called_as_given() -> None:
    upstream = _upstream(["http://embedder:8001"], resolve=False)
    asyncio.run(upstream.refresh())
    assert [(r.url, r.host) for r in upstream.replicas] == [("http://embedder:8001", None)]
    secure = _upstream(["https://search.internal:8443/api"], resolver=_fake_dns({"search.internal": ["10.1.2.3"]}))
    asyncio.run(secure.refresh())
    (replica,) = list(secure.replicas)
    assert replica.target("/v1/search") == (
        "https://10.1.2.3:8443/api/v1/search",
        {"Host": "search.internal:8443"},
        {"sni_hostname": "search.internal"},  # the certificate is checked against the name, not the address
    )


# --- the gateway app ----------------------------------------------------------------------------------------


def test_health_reports_each_replica_and_metrics_count_calls_per_replica() -> None:
    with replicas_on(["127.0.0.1", "127.0.0.1"]) as running:
        live, dead = running.url(0), _refused_url()
        settings = GatewaySettings(embedder_url=f"{live},{dead}", search_url=running.url(1), fetcher_url=_refused_url())
        with TestClient(create_app(settings)) as client:
            internal = client.get("/internal/health").json()
            public = client.get("/api/health")
            metrics = client.get("/metrics").text
    embedder = internal["services"]["embedder"]
    assert embedder["ready"] is True and embedder["reason"] == "1 of 2 replicas ready"
    assert embedder["url"] == f"{live},{dead}"
    assert [(r["url"], r["ready"]) for r in embedder["replicas"]] == [(live, True), (dead, False)]
    assert "refused the connection" in embedder["replicas"][1]["reason"]
    assert internal["services"]["search"]["replicas"] == [{"ready": True, "url": running.url(1)}]
    # Public: the same states, no address; degraded because the fetcher has no replica ready.
    assert public.status_code == 503 and public.json()["status"] == "degraded"
    shown = public.json()["services"]["embedder"]
    assert [r["ready"] for r in shown["replicas"]] == [True, False] and "127.0.0.1" not in public.text
    # Two readiness checks each (internal and public health), counted per replica and outcome.
    assert f'gateway_replica_requests_total{{outcome="answered",replica="{live}",service="embedder"}} 2.0' in metrics
    assert (
        f'gateway_replica_requests_total{{outcome="connect_failed",replica="{dead}",service="embedder"}} 2.0' in metrics
    )
    assert f'gateway_replica_up{{replica="{dead}",service="embedder"}} 0.0' in metrics
