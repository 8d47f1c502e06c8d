"""Requests per client per minute, as a sliding window; over the limit answers 429 with Retry-After."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class SlidingWindowLimiter:
    def __init__(self, per_minute: int, window_seconds: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window = window_seconds
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, client: str, now: float | None = None) -> float:
        """0 when the request may go ahead (and it is counted); else the seconds until it may."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events[client]
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.per_minute:
                return events[0] + self.window - now
            events.append(now)
            if len(self._events) > 100_000:  # forget idle clients rather than grow without end
                for key in [k for k, v in self._events.items() if not v]:
                    del self._events[key]
            return 0.0
