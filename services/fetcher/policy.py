"""Politeness per source domain: concurrency, request spacing, back-off after 429/503, byte budgets.

Each domain (or the policy that covers it) has one `DomainGate`. A request to a source first takes
a turn at its gate, which waits for a free slot, for the spacing since the previous request, and
for any back-off the source asked for; the gate also holds the domain's byte budgets, which are
sliding windows (not counters since start-up), whose every reservation is recorded durably
(budgets.py) before its request leaves, so that no crash or restart can reset them.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from services.fetcher.budgets import BudgetStore, BudgetStoreError, Counted
from services.fetcher.errors import FetchFailed

logger = logging.getLogger(__name__)

DEFAULT_POLICY_KEY = "*"


class ByteBudget(BaseModel):
    """At most `bytes` received from the domain in any `seconds`-long stretch of time."""

    model_config = ConfigDict(extra="forbid")

    bytes: int = Field(ge=1, description="Bytes allowed within the window.")
    seconds: float = Field(gt=0, description="Length of the sliding window, in seconds.")


class DomainPolicy(BaseModel):
    """How the fetcher treats one source domain."""

    model_config = ConfigDict(extra="forbid")

    max_concurrency: int = Field(4, ge=1, le=256, description="Requests in flight to the domain at once.")
    requests_per_second: float | None = Field(
        None, gt=0, description="Most requests started per second; null for no spacing."
    )
    budgets: list[ByteBudget] = Field(default_factory=list, description="Byte budgets over sliding windows.")
    renditions: Literal["inaturalist", "wikimedia"] | None = Field(
        None, description="The domain publishes smaller renditions in this URL layout."
    )
    not_found_seconds: float = Field(
        3600.0, ge=0, description="How long a 404 or 410 is remembered: the URL is not asked for again meanwhile."
    )
    server_error_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a 5xx answer (other than 503, which backs the whole domain off) is remembered.",
    )


class SlidingWindow:
    """A sum over the last `seconds`, kept in small buckets so a day of traffic stays a few KB.

    A bucket counts until its *end* leaves the window, so the sum can only over-count (by at most
    one bucket's share of the window), never under-count: a budget held against it is never broken.
    """

    def __init__(self, seconds: float, *, buckets: int = 360, clock: Callable[[], float] = time.time) -> None:
        self.seconds = seconds
        self.width = seconds / buckets
        self.clock = clock
        self._buckets: deque[list[float]] = deque()  # [start, amount], oldest first
        self._total = 0.0

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + self.width <= now - self.seconds:
            self._total -= self._buckets.popleft()[1]

    def add(self, amount: float, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._expire(now)
        start = math.floor(now / self.width) * self.width
        if self._buckets and self._buckets[-1][0] >= start:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([start, amount])
        self._total += amount

    def total(self, now: float | None = None) -> float:
        self._expire(self.clock() if now is None else now)
        return self._total if self._buckets else 0.0

    def seconds_until_below(self, level: float, now: float | None = None) -> float:
        """How long until the sum drops to `level` or under, if nothing more is added."""
        now = self.clock() if now is None else now
        remaining = self.total(now)
        for start, amount in self._buckets:
            if remaining <= level:
                break
            remaining -= amount
            if remaining <= level:
                return max(0.0, start + self.width + self.seconds - now)
        return 0.0


class Turn:
    """One request's turn at a gate; tells the gate when the source answered and what it sent."""

    def __init__(self, gate: DomainGate) -> None:
        self.gate = gate
        self.answered_at: float | None = None
        self.reserved = 0
        self.row: int | None = None  # the reservation's row in the budget store

    def responded(self) -> None:
        """The source has seen the request: the next one is spaced from now."""
        self.answered_at = time.monotonic()

    async def reserve(self, nbytes: int) -> None:
        """Hold `nbytes` of every budget for this request, or refuse it with budget_exhausted; on a
        domain with budgets, return only once the reservation is on disk (refused with `error` when
        it cannot be recorded: a budget we cannot keep is not spent)."""
        self.gate.check_budget(nbytes)
        self.gate.reserved += nbytes
        self.reserved = nbytes
        store = self.gate.store
        if not self.gate.windows or store is None:
            return
        try:
            self.row = await store.reserve(self.gate.key, nbytes)
        except BudgetStoreError as exc:
            self.settle(0)
            logger.error("%s", exc)
            raise FetchFailed("error", f"{self.gate.key}: {exc}; not asking the source") from exc

    def settle(self, received: int) -> None:
        self.gate.reserved -= self.reserved
        self.reserved = 0
        if received:
            for window in self.gate.windows:
                window.add(received)
        if self.row is not None and self.gate.store is not None:
            self.gate.store.settle(self.row, received)
            self.row = None


class DomainGate:
    """The live state of one policy: slots, the earliest next start, back-off, budgets."""

    def __init__(self, key: str, policy: DomainPolicy, store: BudgetStore | None = None) -> None:
        self.key = key
        self.policy = policy
        self.store = store
        self.interval = 1.0 / policy.requests_per_second if policy.requests_per_second else 0.0
        self.slots = anyio.Semaphore(policy.max_concurrency)
        self.next_start = 0.0  # time.monotonic()
        self.backoff_until = 0.0  # time.monotonic()
        self.in_flight = 0
        self.waiting = 0
        self.reserved = 0
        self.windows = [SlidingWindow(budget.seconds) for budget in policy.budgets]

    def back_off(self, seconds: float) -> None:
        """The source asked us to stay away (429/503): no request to it for `seconds`."""
        self.backoff_until = max(self.backoff_until, time.monotonic() + seconds)
        logger.warning("backing off %s for %.0f s", self.key, seconds)

    def backoff_remaining(self) -> float:
        return max(0.0, self.backoff_until - time.monotonic())

    def check_budget(self, nbytes: int) -> None:
        """Refuse (budget_exhausted) when `nbytes` more could take any window over its budget."""
        for budget, window in zip(self.policy.budgets, self.windows, strict=True):
            used = window.total() + self.reserved
            if used + nbytes > budget.bytes:
                wait = window.seconds_until_below(budget.bytes - nbytes - self.reserved)
                raise FetchFailed(
                    "budget_exhausted",
                    f"{self.key}: the budget of {budget.bytes} bytes per {budget.seconds:g} s would be passed "
                    f"({int(used)} used)",
                    retry_after=wait if wait > 0 else None,
                )

    def budget_usage(self) -> list[tuple[ByteBudget, int]]:
        return [(b, int(w.total()) + self.reserved) for b, w in zip(self.policy.budgets, self.windows, strict=True)]

    def _refuse_wait(self, wait: float) -> FetchFailed:
        return FetchFailed(
            "rate_limited",
            f"{self.key}: no turn for this request within the queue timeout (about {wait:.0f} s to wait)",
            retry_after=wait,
        )

    @asynccontextmanager
    async def turn(self, max_wait: float) -> AsyncIterator[Turn]:
        """Wait for a slot, the request spacing and any back-off; refuse (rate_limited) past `max_wait`."""
        deadline = time.monotonic() + max_wait
        # Fail fast when the wait is already known to be too long: a back-off, or a queue at a
        # spaced domain that cannot drain in time. Then the caller hears Retry-After at once.
        known_wait = max(self.next_start, self.backoff_until) - time.monotonic()
        if self.interval:
            known_wait += (self.waiting // self.policy.max_concurrency) * self.interval
        if known_wait > max_wait:
            raise self._refuse_wait(known_wait)
        self.waiting += 1
        try:
            with anyio.move_on_after(max_wait) as scope:
                await self.slots.acquire()
        finally:
            self.waiting -= 1
        if scope.cancelled_caught:
            raise self._refuse_wait(max_wait)
        try:
            while True:
                now = time.monotonic()
                ready_at = max(self.next_start, self.backoff_until)
                if ready_at <= now:
                    break
                if ready_at > deadline:
                    raise self._refuse_wait(ready_at - now)
                await anyio.sleep(ready_at - now)
            self.next_start = now + self.interval
            self.in_flight += 1
            turn = Turn(self)
            try:
                yield turn
            finally:
                self.in_flight -= 1
                if turn.reserved or turn.row is not None:
                    turn.settle(0)
                # Spaced from when the source answered (or we gave up), not from when we sent: the
                # source has certainly seen the request by then, so however the network delays
                # each request, two never reach it closer together than the interval.
                ended = turn.answered_at or time.monotonic()
                self.next_start = max(self.next_start, ended + self.interval)
        finally:
            self.slots.release()


class PolicyBook:
    """Which policy covers a host, and the gates, made on first use. `store` keeps the budgets'
    reservations across restarts (None: in memory only)."""

    def __init__(self, policies: dict[str, DomainPolicy], store: BudgetStore | None = None) -> None:
        self.policies = policies
        self.default = policies.get(DEFAULT_POLICY_KEY, DomainPolicy())
        self.store = store
        self.gates: dict[str, DomainGate] = {}

    def policy_key(self, host: str) -> str:
        """The host itself, else its nearest parent domain with a policy, else the host (on the default)."""
        labels = host.lower().rstrip(".").split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.policies and candidate != DEFAULT_POLICY_KEY:
                return candidate
        return host.lower()

    def policy(self, host: str) -> DomainPolicy:
        return self.policies.get(self.policy_key(host), self.default)

    def gate(self, host: str) -> DomainGate:
        # A named policy is one gate for all its hosts (an organisation's limit is for all of it);
        # every other host gets a gate of its own on the default policy.
        key = self.policy_key(host)
        gate = self.gates.get(key)
        if gate is None:
            gate = self.gates[key] = DomainGate(key, self.policies.get(key, self.default), self.store)
        return gate

    def longest_window(self) -> float:
        """The longest budget window of any policy, in seconds (what the store must remember)."""
        return max((b.seconds for p in [self.default, *self.policies.values()] for b in p.budgets), default=0.0)

    def restore(self, counted: Iterable[Counted]) -> None:
        """Count what earlier runs received (or reserved and never settled), oldest first."""
        for item in counted:
            for window in self.gate(item.policy).windows:
                window.add(item.bytes, now=item.at)
