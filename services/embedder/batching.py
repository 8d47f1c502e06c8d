"""Micro-batching: images from concurrent requests share one forward pass.

Callers submit their items and await their own results; one worker task takes whatever is queued
(up to `max_size` items), runs the batch (off the event loop: `run_batch` is the caller's thread-pool
hop) and hands each caller back exactly its own results, in its own order. While a batch runs, new
items queue up, so under load the next batch fills without waiting at all.

A caller may announce items it is still preparing (`incoming`: the images of requests still being
decoded). A batch about to run waits for announced items, at most `max_wait` seconds, and not at all
when none are announced: a lone request never waits, and concurrent requests that arrive together
share one forward pass instead of the first running alone.

After a pass that several callers shared, the next one also waits (at most `max_wait`) for items
nobody has announced yet: clients that got their answers together send their next requests
together, but the first of those is decoded before the others are even read, and would otherwise
run alone (a ViT-L/14 pass of 1 then one of 7, where one of 8 costs about what 7 do). It waits for as
many callers as that pass had (on top of any that queued while it ran), no more: two clients in lockstep
run as soon as both are back, rather than waiting `max_wait` for an eighth that never comes. Once a pass
runs alone, lone requests stop waiting again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class BatcherClosed(RuntimeError):
    """The batcher stopped (the service is shutting down) before this item ran."""


@dataclass
class _Item(Generic[In, Out]):
    value: In
    future: asyncio.Future[Out] = field(repr=False)
    caller: int = 0  # which submit() call it came from


@dataclass
class BatchStats:
    """What the batcher has done, for logs and tests: how many batches of which sizes, and seconds running them."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0  # running batches (their hops to the model thread included)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class Reservation(Generic[In, Out]):
    """Items a caller announced; submitting them (or leaving the `incoming` block) withdraws the notice."""

    def __init__(self, batcher: Batcher[In, Out], count: int) -> None:
        self._batcher = batcher
        self.left = count

    async def submit(self, values: Sequence[In]) -> list[Out]:
        self._withdraw(min(self.left, len(values)))
        return await self._batcher.submit(values)

    def _withdraw(self, count: int) -> None:
        self.left -= count
        self._batcher._incoming -= count
        self._batcher._changed.set()


class Batcher(Generic[In, Out]):
    """Gathers items from concurrent callers into batches of at most `max_size`.

    `run_batch` takes a list of items and returns one result per item, in order. It is awaited,
    so it can hop to a thread pool; one batch runs at a time.
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_size: int,
        max_wait: float,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run_batch = run_batch
        self.max_size = max_size
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item[In, Out]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._incoming = 0  # announced items not yet submitted
        self._calls = 0
        # Callers of the last pass when it held several (else none): as many are likely on their way again.
        self._company: set[int] = set()
        self._changed = asyncio.Event()  # an item was queued, or a notice withdrawn

    @contextlib.contextmanager
    def incoming(self, count: int) -> Iterator[Reservation[In, Out]]:
        """Announce `count` items being prepared; submit them through the reservation this yields."""
        self._incoming += count
        reservation = Reservation(self, count)
        try:
            yield reservation
        finally:
            reservation._withdraw(reservation.left)

    async def submit(self, values: Sequence[In]) -> list[Out]:
        """Each value's result, in order; the values may run in one batch or several, with other callers'."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        if self._worker is None:
            # Started on first use, inside the event loop that will run it, with a context of its own: a copy of the
            # first caller's would put that request's id on every pass's log line for good.
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="batcher", context=contextvars.Context()
            )
        loop = asyncio.get_running_loop()
        self._calls += 1
        items = [_Item(value, loop.create_future(), self._calls) for value in values]
        for item in items:
            self._queue.put_nowait(item)
        self._changed.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            # A caller that goes away (client disconnect, error in a sibling) frees its queued items.
            for item in items:
                item.future.cancel()
            raise

    async def close(self) -> None:
        """Stop the worker; anything still queued fails with BatcherClosed."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the service is shutting down"))

    async def _gather(self) -> list[_Item[In, Out]]:
        """The next batch: wait for one live item, then take what is queued, waiting (at most `max_wait`)
        for items announced as incoming, or after a shared pass for as many callers as it had, until the batch
        is full."""
        batch: list[_Item[In, Out]] = []
        callers: set[int] = set()
        self._take(batch, callers)
        # Callers that queued while the last pass ran are here already; the last pass's come back as new callers
        # (but one still queued, its request larger than a pass, is not coming back: it counts once).
        wanted = len(callers | self._company)
        while not batch:
            item = await self._queue.get()
            if not item.future.done():
                batch.append(item)
                callers.add(item.caller)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_size:
            self._changed.clear()
            self._take(batch, callers)
            remaining = deadline - loop.time()
            if len(batch) >= self.max_size or remaining <= 0 or (self._incoming <= 0 and len(callers) >= wanted):
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        self._company = callers if len(callers) > 1 else set()
        return batch

    def _take(self, batch: list[_Item[In, Out]], callers: set[int]) -> None:
        """Move what is queued into `batch`, up to `max_size`, leaving out items whose caller went away."""
        while len(batch) < self.max_size and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                batch.append(item)
                callers.add(item.caller)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time()
            batch = await self._gather()
            self.stats.record(len(batch))
            started = loop.time()
            try:
                results = await self._run_batch([item.value for item in batch])
                ran = loop.time() - started
                self.stats.seconds += ran
                if logger.isEnabledFor(logging.DEBUG):  # counting the callers is work only the log line needs
                    logger.debug(
                        "a batch of %d (callers: %d): %.0f ms gathering, %.0f ms running",
                        len(batch),
                        len({item.caller for item in batch}),
                        (started - idle) * 1000,
                        ran * 1000,
                    )
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(BatcherClosed("the service is shutting down"))
                raise
            except Exception as exc:
                # One failing batch fails its callers, not the worker: the next batch runs as usual.
                logger.exception("a batch of %d failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
