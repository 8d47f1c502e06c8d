"""Several replicas of one service behind the gateway: which replica takes the next call, which are down
and for how long, and the addresses a service's host name resolves to.

A service is reached at one or more base URLs (`GATEWAY_EMBEDDER_URL=http://a:8001,http://b:8001`); a URL
whose host is a name is re-resolved every `GATEWAY_RESOLVE_INTERVAL` seconds and each address it resolves
to is a replica (compose's service name with `deploy.replicas`, a Kubernetes headless Service). A call to
an address carries the configured host in its Host header and as its TLS server name (SNI), so the
replica sees the request as if the name had been dialled.

Spreading is least-outstanding-requests, ties broken round-robin (as Envoy's and NGINX's `least_conn`).
A replica that refuses a connection, does not accept one in time, drops one under a call, or answers
503 for itself (still loading, or a 503 that is not one of the services' error answers: a proxy's) is
down for a back-off that doubles with each failure in a row (up to a ceiling) and ends at its first
good answer; while it is down, calls go to the others. A 503 with another error code, or a `not_ready`
that names a resource, says one resource is unavailable on a working replica (its taxon names loading or
not loaded, its labels not configured): that call is tried on another replica, but the replica stays in.
When every replica is down, the one due back soonest is tried, so one replica alone behaves as before.
httpx's transports have no notion of several origins behind one client, hence this module; it imports
nothing from the web framework.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.errors import NotReady
from services.common.http import CLOSED_CONNECTION, describe, send_idempotent

logger = logging.getLogger(__name__)

# A connection that was never made: nothing reached the replica, so any call may go to another one.
CONNECT_FAILURES: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)

Resolver = Callable[[str, int], Awaitable[list[str]]]
Clock = Callable[[], float]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for TCP, sorted; the system's resolver, run in the event loop's
    thread pool (asyncio's `getaddrinfo`), so a slow DNS server never stalls the loop.
    Raises `OSError` (`socket.gaierror`) when the name does not resolve."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_address(host: str) -> bool:
    """An IP literal: a URL naming one needs no resolving."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def unavailable_as_a_whole(response: httpx.Response) -> bool:
    """Whether a 503 says the replica serves nothing now: it is still loading (`not_ready` naming no `resource`
    in its details), or the answer is not one of the services' JSON errors (a proxy's 503, a readiness body).
    Any other error code, or a `not_ready` naming a resource (the taxon names still loading), is one
    unavailable resource of a replica that is up (services/common/errors.py)."""
    try:
        body = response.json()
    except ValueError:
        return True
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    one_resource = isinstance(details, dict) and details.get("resource") is not None
    return code is None or (code == NotReady.code and not one_resource)


@dataclass(eq=False)
class Replica:
    """One process of a service, as the gateway sees it.

    `url`: the base URL calls go to (an address, where the configured URL named a host). `host`: the Host
    header and TLS server name to send (the configured URL's), or None when `url` is the configured URL.
    `requests`: calls answered or failed, by outcome. `down_until`: clock time before which the replica is
    left out (0: up); `failures` in a row set its back-off; `reason`: why it was last marked down."""

    url: str
    host: str | None = None
    server_name: str | None = None
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0
    reason: str | None = None
    requests: Counter[str] = field(default_factory=Counter)

    def is_down(self, now: float) -> bool:
        return now < self.down_until

    def target(self, path: str) -> tuple[str, dict[str, str], dict[str, object]]:
        """(URL, headers, httpx request extensions) of a call to `path` on this replica."""
        if self.host is None:
            return self.url + path, {}, {}
        extensions: dict[str, object] = {"sni_hostname": self.server_name} if self.server_name else {}
        return self.url + path, {"Host": self.host}, extensions


@dataclass(frozen=True)
class ReplicaSpec:
    """Where one replica is: what `Replica` is built from and known by (its `url`)."""

    url: str
    host: str | None = None
    server_name: str | None = None


class ReplicaSet:
    """The replicas of one service and their state; pure bookkeeping, the clock injected.

    `backoff`: seconds a replica is down after its first failure in a row, doubled for each further
    one, at most `max_backoff`."""

    def __init__(
        self,
        specs: Iterable[ReplicaSpec],
        *,
        backoff: float,
        max_backoff: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.backoff = backoff
        self.max_backoff = max(max_backoff, backoff)
        self.clock = clock
        self.replicas: list[Replica] = []
        self._cursor = 0
        self.update(specs)

    def __iter__(self) -> Iterator[Replica]:
        return iter(list(self.replicas))

    def __len__(self) -> int:
        return len(self.replicas)

    def update(self, specs: Iterable[ReplicaSpec]) -> None:
        """The replicas are now `specs` (in this order); a replica known before keeps its state."""
        known = {replica.url: replica for replica in self.replicas}
        fresh = []
        for spec in dict.fromkeys(specs):
            replica = known.get(spec.url) or Replica(spec.url)
            replica.host, replica.server_name = spec.host, spec.server_name
            fresh.append(replica)
        if not fresh:
            raise ValueError("a service needs at least one replica")
        self.replicas = fresh

    def pick(self, exclude: Collection[Replica] = ()) -> Replica | None:
        """The replica for the next call, none of `exclude`; None when every replica is excluded.

        Among the replicas that are up, the one with the fewest calls in flight, ties taken in turn
        (round-robin). When every candidate is down, the one whose back-off ends first."""
        now = self.clock()
        candidates = [r for r in self.replicas if r not in exclude]
        if not candidates:
            return None
        up = [r for r in candidates if not r.is_down(now)]
        if not up:
            return min(candidates, key=lambda r: r.down_until)
        fewest = min(r.outstanding for r in up)
        count = len(self.replicas)
        for step in range(count):
            index = (self._cursor + step) % count
            replica = self.replicas[index]
            if replica in up and replica.outstanding == fewest:
                self._cursor = index + 1
                return replica
        raise AssertionError("unreachable: an up replica has the fewest calls")

    def begin(self, replica: Replica) -> None:
        replica.outstanding += 1

    def end(self, replica: Replica, outcome: str) -> None:
        replica.outstanding -= 1
        replica.requests[outcome] += 1

    def failed(self, replica: Replica, reason: str) -> float:
        """Mark `replica` down; the seconds of its back-off."""
        replica.failures += 1
        wait = min(self.backoff * 2 ** min(replica.failures - 1, 30), self.max_backoff)
        replica.down_until = self.clock() + wait
        replica.reason = reason
        return wait

    def succeeded(self, replica: Replica) -> None:
        """The replica answered: up again, its back-off reset."""
        replica.failures = 0
        replica.down_until = 0.0
        replica.reason = None

    def up(self) -> list[Replica]:
        now = self.clock()
        return [r for r in self.replicas if not r.is_down(now)]


def specs_for(url: httpx.URL, addresses: list[str] | None) -> list[ReplicaSpec]:
    """The replicas one configured base URL stands for: itself, or one per address its host resolved to."""
    base = str(url).rstrip("/")
    if not addresses:
        return [ReplicaSpec(base)]
    name = url.host if url.scheme == "https" else None
    netloc = url.netloc.decode("ascii")
    return [ReplicaSpec(str(url.copy_with(host=address)).rstrip("/"), netloc, name) for address in addresses]


class Upstream:
    """One service reached through its replicas: resolving, spreading, retrying, health probes.

    `urls`: the configured base URLs; `resolve`: whether a URL naming a host stands for every address the
    name resolves to (re-resolved by `refresh`); a name that does not resolve stays one replica, dialled by
    name (httpx resolves it then, and fails the call if it still does not)."""

    def __init__(
        self,
        service: str,
        urls: list[str],
        *,
        backoff: float,
        max_backoff: float,
        resolve: bool = True,
        resolver: Resolver = resolve_addresses,
        clock: Clock = time.monotonic,
    ) -> None:
        self.service = service
        self.urls = [httpx.URL(url) for url in urls]
        self.resolve = resolve
        self.resolver = resolver
        self._addresses: dict[int, list[str]] = {}
        self.replicas = ReplicaSet(self._specs(), backoff=backoff, max_backoff=max_backoff, clock=clock)

    def _specs(self) -> list[ReplicaSpec]:
        return [spec for i, url in enumerate(self.urls) for spec in specs_for(url, self._addresses.get(i))]

    @property
    def resolves(self) -> bool:
        """Whether any configured URL names a host to resolve."""
        return self.resolve and any(not is_address(url.host) for url in self.urls)

    async def refresh(self) -> None:
        """Resolve each configured host name again; a name that fails keeps its last addresses."""
        if not self.resolves:
            return
        for i, url in enumerate(self.urls):
            if is_address(url.host):
                continue
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                addresses = await self.resolver(url.host, port)
            except OSError as exc:
                why = describe(exc)
                logger.warning("%s: %s did not resolve (%s); keeping its last addresses", self.service, url.host, why)
                continue
            if addresses and addresses != self._addresses.get(i):
                logger.info("%s: %s resolves to %s", self.service, url.host, ", ".join(addresses))
                self._addresses[i] = addresses
        self.replicas.update(self._specs())

    async def _one(
        self, replica: Replica, send: Callable[[Replica], Awaitable[httpx.Response]], *, cheap: bool = False
    ) -> httpx.Response:
        """`send(replica)`, counted, its failure or answer recorded in the replica's state. `cheap`: a call any
        live replica answers at once (/readyz, /v1/stats), so a time-out means stalled and leaves it out."""
        self.replicas.begin(replica)
        outcome = "cancelled"
        try:
            response = await send(replica)
            if response.status_code == 503:
                outcome = "unavailable"  # another replica may answer
                if unavailable_as_a_whole(response):
                    self._down(replica, f"answered 503 ({response.text[:160]})")
                else:
                    self.replicas.succeeded(replica)  # alive and answering: only this resource is not
            else:
                outcome = "answered"
                self.replicas.succeeded(replica)
            return response
        except CONNECT_FAILURES as exc:
            outcome = "connect_failed"
            self._down(replica, f"could not connect ({describe(exc)})")
            raise
        except CLOSED_CONNECTION as exc:
            outcome = "dropped"
            self._down(replica, f"dropped the connection ({describe(exc)})")
            raise
        except httpx.TimeoutException as exc:
            outcome = "timeout"
            if cheap:  # a stalled process (SIGSTOP, a hung event loop): without this every call kept trying it
                self._down(replica, f"did not answer a cheap call in time ({describe(exc)})")
            # Otherwise slow, not gone: a search may take long; the replica stays up.
            raise
        except httpx.HTTPError:
            outcome = "error"
            raise
        finally:
            self.replicas.end(replica, outcome)

    def _down(self, replica: Replica, reason: str) -> None:
        wait = self.replicas.failed(replica, reason)
        logger.warning("%s replica %s %s: left out for %.1f s", self.service, replica.url, reason, wait)

    async def call(
        self,
        send: Callable[[Replica], Awaitable[httpx.Response]],
        *,
        deadline: float | None = None,
        cheap: bool = False,
    ) -> httpx.Response:
        """An idempotent call, `send(replica)`, on the replica `pick` gives, moving on when it fails.

        A connection that could not be made goes on to each replica not yet tried (nothing was sent);
        a replica answering 503 too, while one not yet tried is left; a connection dropped under the
        call is sent once more (services/common/http.py's `send_idempotent`), on another replica when
        there is one. No new try starts after `deadline` (event-loop time). `cheap`: see `_one`. The last
        failure is raised (httpx's exception) or the last 503 returned when every replica failed."""
        loop = asyncio.get_running_loop()
        tried: set[Replica] = set()

        async def attempt() -> httpx.Response:
            failure: Exception | None = None
            unavailable: httpx.Response | None = None
            while True:
                replica = self.replicas.pick(exclude=tried)
                if replica is None and failure is None and unavailable is None:
                    replica = self.replicas.pick()  # the try after a dropped connection, every replica tried
                tried_here = failure is not None or unavailable is not None
                out_of_time = tried_here and deadline is not None and loop.time() >= deadline
                if replica is None or out_of_time:
                    if unavailable is not None:
                        return unavailable
                    assert failure is not None
                    raise failure
                tried.add(replica)
                try:
                    response = await self._one(replica, send, cheap=cheap)
                except CONNECT_FAILURES as exc:
                    failure = exc
                    continue
                if response.status_code == 503 and any(r not in tried for r in self.replicas):
                    unavailable = response
                    continue
                return response

        return await send_idempotent(attempt)

    async def probe(
        self, send: Callable[[Replica], Awaitable[httpx.Response]]
    ) -> list[tuple[Replica, httpx.Response | httpx.HTTPError]]:
        """`send` to every replica at once (a readiness check), each answer recorded in its state."""

        async def one(replica: Replica) -> httpx.Response | httpx.HTTPError:
            try:
                return await self._one(replica, send, cheap=True)
            except httpx.HTTPError as exc:
                return exc

        replicas = list(self.replicas)
        answers = await asyncio.gather(*(one(replica) for replica in replicas))
        return list(zip(replicas, answers, strict=True))


class ReplicaCollector(Collector):
    """Per-replica figures for /metrics, read from the replicas' state when scraped:
    `gateway_replica_requests_total{service,replica,outcome}`, `gateway_replica_up{service,replica}`,
    `gateway_replica_in_flight{service,replica}`."""

    def __init__(self, upstreams: Callable[[], Iterable[Upstream]]) -> None:
        self.upstreams = upstreams

    def describe(self) -> list[object]:
        return []  # names are fixed; nothing to check against the registry's others at registration

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "gateway_replica_requests",
            "Calls the gateway made to each replica of a service, by outcome",
            labels=["service", "replica", "outcome"],
        )
        up = GaugeMetricFamily(
            "gateway_replica_up", "1 while a replica takes calls, 0 while it is left out", labels=["service", "replica"]
        )
        in_flight = GaugeMetricFamily(
            "gateway_replica_in_flight", "Calls in flight to each replica", labels=["service", "replica"]
        )
        for upstream in self.upstreams():
            now = upstream.replicas.clock()
            for replica in upstream.replicas:
                for outcome, count in sorted(replica.requests.items()):
                    requests.add_metric([upstream.service, replica.url, outcome], count)
                up.add_metric([upstream.service, replica.url], 0.0 if replica.is_down(now) else 1.0)
                in_flight.add_metric([upstream.service, replica.url], replica.outstanding)
        yield from (requests, up, in_flight)
