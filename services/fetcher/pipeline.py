"""An image at a size: from the memory cache, the disk cache, or the source (fetch, render, store).

Concurrent requests for the same image share one fetch and one rendering; requests for different
sizes of the same source file share the download.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.images import InvalidImage
from services.common.schemas.fetcher import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    BudgetStats,
    CacheOutcome,
    CacheStats,
    DomainStats,
    FetcherStats,
    ImageSize,
    RecentError,
)
from services.common.service import BlockingPool
from services.fetcher.cache import CachedImage, DiskCache, MemoryCache, cache_key, etag_of
from services.fetcher.client import Fetched, ImageFetcher
from services.fetcher.errors import FetchFailed
from services.fetcher.settings import FetcherSettings
from services.fetcher.stats import WINDOW_SECONDS, DomainCounters
from services.fetcher.thumbnails import render, renditions_within_cap, smaller_rendition
from services.fetcher.urls import SourceURL, parse_source_url

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """One run of `work` per key at a time; whoever asks meanwhile awaits the same result.

    The work runs as a task of its own, so a caller that goes away (a browser closing the page)
    does not cancel it for the others, and the result still lands in the cache.
    """

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[T]] = {}
        self.joined = 0

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        task = self.running.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(work())
            self.running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.joined += 1
        return await asyncio.shield(task), shared

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self.running.get(key) is task:
            del self.running[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a failure nobody awaited any more is not logged as lost

    async def cancel_all(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class Served:
    image: CachedImage
    cache: CacheOutcome


@dataclass
class CacheCounters:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class ImagePipeline:
    def __init__(
        self,
        fetcher: ImageFetcher,
        memory: MemoryCache,
        disk: DiskCache,
        pool: BlockingPool,
        settings: FetcherSettings,
    ) -> None:
        self.fetcher = fetcher
        self.memory = memory
        self.disk = disk
        self.pool = pool
        self.settings = settings
        self.sizes = settings.sizes()
        self.counters = CacheCounters()
        self.renders: SingleFlight[CachedImage] = SingleFlight()
        self.downloads: SingleFlight[Fetched] = SingleFlight()

    async def image(self, url: str, size: ImageSize) -> Served:
        """The image at `url` rendered at `size`, or FetchFailed with a status word (bad_url: `url`
        cannot be parsed). The URL is normalised here, once: equal URLs share one cache entry."""
        source = parse_source_url(url)
        longest_side = self.sizes[size]
        key = cache_key(source.href, size, longest_side, self.settings.thumb_format)
        cached = self.memory.get(key)
        if cached is not None:
            self.counters.memory_hits += 1
            return Served(cached, "memory")
        if self.disk.enabled:
            cached = await self.pool.run(self.disk.get, key)
            if cached is not None:
                self.counters.disk_hits += 1
                self.memory.put(key, cached)
                return Served(cached, "disk")
        self.counters.misses += 1
        image, shared = await self.renders.run(key, lambda: self._make(key, source, longest_side))
        return Served(image, "shared" if shared else "miss")

    async def _make(self, key: str, url: SourceURL, longest_side: int | None) -> CachedImage:
        fetched = await self._download_smallest(url, longest_side)
        try:
            rendered = await self.pool.run(
                lambda: render(
                    fetched.data,
                    longest_side=longest_side,
                    image_format=self.settings.thumb_format,
                    max_pixels=self.settings.max_image_pixels,
                )
            )
        except InvalidImage as exc:
            code = "too_large" if exc.code == "image_too_large" else "not_an_image"
            raise FetchFailed(code, f"the source did not send a usable image: {exc.message}") from exc
        image = CachedImage(rendered.data, rendered.media_type, etag_of(rendered.data))
        self.memory.put(key, image)
        if self.disk.enabled:  # never raises: a full or read-only disk costs the cache, not the answer
            await self.pool.run(self.disk.put, key, image)
        return image

    async def _download_smallest(self, url: SourceURL, longest_side: int | None) -> Fetched:
        """The smallest published rendition that serves the size; the URL as named if that one fails;
        a smaller rendition if the one named is over the size cap."""
        layout = self.fetcher.book.policy(url.host).renditions
        smaller = smaller_rendition(url.href, layout, longest_side)
        if smaller is not None:
            try:
                return await self._download(smaller)
            except FetchFailed as exc:
                # Missing (404), or refused the way S3 refuses a missing key (403): try the one named.
                if exc.code not in ("not_found", "error"):
                    raise
                logger.info("%s failed (%s); fetching %s as named", smaller, exc.code, url.href)
        try:
            return await self._download(url)
        except FetchFailed as exc:
            if exc.code != "too_large":
                raise
            for within_cap in renditions_within_cap(url.href, layout):
                logger.info("%s is over the size cap; fetching %s instead", url.href, within_cap)
                try:
                    return await self._download(within_cap)
                except FetchFailed as smaller_failed:
                    if smaller_failed.code not in ("too_large", "not_found", "error"):
                        raise
            raise

    async def _download(self, url: SourceURL | str) -> Fetched:
        """One download per URL at a time; a rendition's URL (str) is parsed by the fetcher."""
        key = url.href if isinstance(url, SourceURL) else url
        fetched, _ = await self.downloads.run(key, lambda: self.fetcher.fetch(url))
        return fetched

    async def batch(self, request: BatchRequest) -> BatchResponse:
        """Every URL fetched at once (each domain's gate keeps the pace), each with its own status."""
        started = time.perf_counter()

        async def one(url: str) -> BatchItem:
            try:
                served = await self.image(url, request.size)
            except FetchFailed as exc:
                return BatchItem(url=url, status=exc.code, message=exc.message, retry_after=exc.retry_after)
            image = served.image
            return BatchItem(
                url=url,
                status="ok",
                media_type=image.media_type,
                etag=image.etag,
                bytes=len(image.data),
                cache=served.cache,
                data=base64.b64encode(image.data).decode() if request.include_data else None,
            )

        results = await asyncio.gather(*(one(url) for url in request.urls))
        counts = Counter(item.status for item in results)
        return BatchResponse(
            size=request.size,
            results=list(results),
            counts=dict(counts),
            took_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def stats(self) -> FetcherStats:
        ledger, book = self.fetcher.ledger, self.fetcher.book
        domains = []
        # Hosts asked this hour, and policies whose budgets still count bytes from before a restart.
        hosts = set(ledger.domains) | {
            key for key, gate in book.gates.items() if any(used for _, used in gate.budget_usage())
        }
        for host in sorted(hosts):
            counters = ledger.domains.get(host) or DomainCounters()
            requests, errors = int(counters.requests.total()), int(counters.errors.total())
            budgets_used = host in book.gates and any(used for _, used in book.gates[host].budget_usage())
            if not requests and not errors and not counters.in_flight and not budgets_used:
                continue
            key = book.policy_key(host)
            gate = book.gates.get(key)
            domains.append(
                DomainStats(
                    domain=host,
                    requests=requests,
                    bytes=int(counters.bytes.total()),
                    errors=errors,
                    in_flight=counters.in_flight,
                    policy=key if key in book.policies else "*",
                    waiting=gate.waiting if gate else 0,
                    backoff_seconds=round(gate.backoff_remaining(), 1) if gate else 0.0,
                    budgets=[
                        BudgetStats(window_seconds=budget.seconds, limit_bytes=budget.bytes, used_bytes=used)
                        for budget, used in (gate.budget_usage() if gate else [])
                    ],
                )
            )
        counters = self.counters
        hits = counters.memory_hits + counters.disk_hits
        looked_up = hits + counters.misses
        cache = CacheStats(
            hits=hits,
            misses=counters.misses,
            hit_rate=round(hits / looked_up, 4) if looked_up else None,
            memory_hits=counters.memory_hits,
            disk_hits=counters.disk_hits,
            shared=self.renders.joined,
            entries=len(self.disk),
            bytes=self.disk.bytes,
            max_bytes=self.disk.max_bytes,
            evictions=self.disk.evictions,
            memory_entries=len(self.memory),
            memory_bytes=self.memory.bytes,
            memory_max_bytes=self.memory.max_bytes,
        )
        return FetcherStats(
            window_seconds=WINDOW_SECONDS,
            domains=domains,
            fetches=ledger.fetches,
            failures=ledger.failures,
            in_flight=sum(c.in_flight for c in ledger.domains.values()),
            cache=cache,
            recent_errors=[
                RecentError(at=n.at, domain=n.domain, url=n.url, code=n.code, message=n.message) for n in ledger.recent
            ],
        )
