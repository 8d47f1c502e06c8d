"""How much the gateway lets in at once: call slots per service, with a bounded queue and a deadline,
and photo uploads in flight. Beyond either bound a request is shed at once (503 + Retry-After),
so a stalled service shows up as fast refusals rather than latency growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from gateway.errors import ServiceBusy, TooManyUploads

logger = logging.getLogger(__name__)


class CallSlots:
    """At most `size` calls in flight to one service; at most `max_waiting` calls wait for a slot,
    each no longer than `max_wait` seconds and never past its request's deadline.

    `retry_after` (seconds) is what a shed caller is told to wait.
    """

    def __init__(self, service: str, size: int, *, max_waiting: int, max_wait: float, retry_after: float) -> None:
        self.service = service
        self.size = size
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.retry_after = retry_after
        self._free = asyncio.Semaphore(size)
        self.waiting = 0

    @asynccontextmanager
    async def hold(self, deadline: float) -> AsyncIterator[None]:
        """A slot until the block ends. `deadline` is in the event loop's clock (`loop.time()`).

        Raises ServiceBusy at once when the queue is full or the deadline has passed, and when no
        slot frees up within `max_wait` or before the deadline.
        """
        if self._free.locked():
            wait = min(self.max_wait, deadline - asyncio.get_running_loop().time())
            if self.waiting >= self.max_waiting:
                raise self._busy(f"{self.waiting} calls are already waiting")
            if wait <= 0:
                raise self._busy("the request's deadline has passed")
            self.waiting += 1
            try:
                await asyncio.wait_for(self._free.acquire(), wait)
            except TimeoutError:
                raise self._busy(f"no call slot freed up within {wait:.1f} s") from None
            finally:
                self.waiting -= 1
        else:
            await self._free.acquire()
        try:
            yield
        finally:
            self._free.release()

    def _busy(self, why: str) -> ServiceBusy:
        logger.info("shedding a %s call: %s", self.service, why)
        return ServiceBusy(
            self.service,
            f"the {self.service} service is busy: all {self.size} calls to it are in flight and {why}; "
            f"try again in {math.ceil(self.retry_after)} s",
            retry_after=self.retry_after,
        )


class UploadSlots:
    """At most `size` photo uploads in flight; one more is refused at once, before its body is read."""

    def __init__(self, size: int, *, retry_after: float) -> None:
        self.size = size
        self.retry_after = retry_after
        self.in_flight = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.in_flight >= self.size:
            logger.info("shedding an upload: %d in flight", self.in_flight)
            raise TooManyUploads(
                f"{self.in_flight} photo uploads are in flight, the most the gateway takes at once; "
                f"try again in {math.ceil(self.retry_after)} s",
                retry_after=self.retry_after,
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
