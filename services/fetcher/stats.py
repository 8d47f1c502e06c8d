"""What the fetcher has asked of each source: requests, bytes and errors over a sliding hour, in flight now,
and the last few failures, for /v1/stats."""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from services.fetcher.policy import SlidingWindow

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 3600


@dataclass
class DomainCounters:
    requests: SlidingWindow = field(default_factory=lambda: SlidingWindow(WINDOW_SECONDS))
    bytes: SlidingWindow = field(default_factory=lambda: SlidingWindow(WINDOW_SECONDS))
    errors: SlidingWindow = field(default_factory=lambda: SlidingWindow(WINDOW_SECONDS))
    in_flight: int = 0


@dataclass(frozen=True)
class FailureNote:
    at: datetime
    domain: str
    url: str
    code: str
    message: str


class Ledger:
    """Counters per source host (not per policy: the stats say where traffic went)."""

    def __init__(self, recent: int = 20) -> None:
        self.domains: dict[str, DomainCounters] = defaultdict(DomainCounters)
        self.recent: deque[FailureNote] = deque(maxlen=recent)
        self.fetches = 0
        self.failures = 0

    def sent(self, domain: str) -> None:
        counters = self.domains[domain]
        counters.requests.add(1)
        counters.in_flight += 1

    def finished(self, domain: str, received: int) -> None:
        counters = self.domains[domain]
        counters.in_flight -= 1
        if received:
            counters.bytes.add(received)

    def failed(self, domain: str) -> None:
        """A request to `domain` failed (or was refused before it went out)."""
        self.domains[domain].errors.add(1)

    def note(self, url: str, code: str, message: str) -> None:
        """A fetch failed for good: kept among the recent errors."""
        if self.recent.maxlen:
            domain = (urlsplit(url).hostname or "").lower()
            self.recent.append(FailureNote(datetime.now(UTC), domain, url[:300], code, message[:300]))

    def fetch_done(self, ok: bool) -> None:
        self.fetches += 1
        self.failures += 0 if ok else 1
