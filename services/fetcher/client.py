"""Fetch an image's bytes from its source, politely and carefully.

Each request takes a turn at its domain's gate (policy.py), goes out through the guarded client
(transport.py: only to checked addresses), and is read with a size cap, a content check and a
total deadline (httpx's read timeout is per chunk, so a trickling source must be cut off here).
Redirects are followed by hand so that each one is checked like the URL itself; timeouts and
connection errors are retried a few times with jittered back-off; a 429 or 503 backs the domain off.
A source's negative answers (404/410, and other 5xx) are remembered for a while, per its policy, so
a missing image is not asked for again on every view.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anyio
import httpx
from cachetools import TLRUCache

from services.fetcher.errors import FetchFailed
from services.fetcher.policy import DomainGate, PolicyBook
from services.fetcher.safety import MAGIC_BYTES_NEEDED, content_type_refusal, looks_like_image
from services.fetcher.settings import FetcherSettings
from services.fetcher.stats import Ledger
from services.fetcher.urls import SourceURL, UnfetchableURL, parse_source_url

logger = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
# Worth another try: the network or the source hiccuped. Not PoolTimeout: our own pool is full.
RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class Fetched:
    url: str  # where the bytes came from, after any redirects
    data: bytes
    content_type: str | None


@dataclass(frozen=True)
class _Redirect:
    location: str  # as the source sent it: resolved against the URL that sent it


class _Answered(FetchFailed):
    """The source itself answered no (a 404, 410 or 5xx): worth remembering for a while."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


@dataclass(frozen=True)
class _Remembered:
    code: str
    message: str
    until: float  # time.monotonic()


class _NetworkClock:
    """Seconds left for the source to deliver: spent only while a request or a retry's pause runs."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.left = seconds

    @contextmanager
    def running(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            with anyio.fail_after(max(self.left, 0.0)):
                yield
        finally:
            self.left -= time.monotonic() - started


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its forms (seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(exc: httpx.HTTPError, domain: str) -> FetchFailed:
    if isinstance(exc, httpx.TimeoutException):
        return FetchFailed("timeout", f"{domain} timed out ({type(exc).__name__})")
    return FetchFailed("error", f"could not fetch from {domain}: {type(exc).__name__}: {exc}")


class ImageFetcher:
    def __init__(self, client: httpx.AsyncClient, settings: FetcherSettings, book: PolicyBook, ledger: Ledger) -> None:
        self.client = client
        self.settings = settings
        self.book = book
        self.ledger = ledger
        # Negative answers by URL asked, each until its own expiry; the least recently used go first.
        self.remembered: TLRUCache[str, _Remembered] = TLRUCache(
            maxsize=settings.negative_cache_entries, ttu=lambda _key, value, _now: value.until, timer=time.monotonic
        )

    async def fetch(self, url: SourceURL | str) -> Fetched:
        """The bytes at `url`, or FetchFailed with a status word (bad_url when it cannot be parsed)."""
        source = url if isinstance(url, SourceURL) else parse_source_url(url)
        remembered = self.remembered.get(source.href)
        if remembered is not None:
            left = remembered.until - time.monotonic()
            raise FetchFailed(remembered.code, f"{remembered.message} (remembered; asked again in {left:.0f} s)")
        try:
            fetched = await self._follow(source)
        except FetchFailed as exc:
            self.ledger.fetch_done(ok=False)
            self.ledger.note(source.href, exc.code, exc.message)
            if isinstance(exc, _Answered):
                self._remember(source, exc)
            raise
        self.ledger.fetch_done(ok=True)
        return fetched

    def _remember(self, source: SourceURL, answer: _Answered) -> None:
        policy = self.book.policy(source.host)
        seconds = policy.not_found_seconds if answer.status in (404, 410) else policy.server_error_seconds
        if seconds > 0 and self.remembered.maxsize:
            self.remembered[source.href] = _Remembered(answer.code, answer.message, time.monotonic() + seconds)

    async def _follow(self, url: SourceURL) -> Fetched:
        clock = _NetworkClock(self.settings.total_timeout)
        current = url
        for _ in range(self.settings.max_redirects + 1):
            result = await self._with_retries(current, clock)
            if isinstance(result, Fetched):
                return result
            # Each hop is parsed and checked like the URL: here its scheme and form, its addresses
            # when it connects. A Location that cannot be parsed fails this URL, nothing else.
            try:
                current = parse_source_url(result.location, base=current.href)
            except UnfetchableURL as exc:
                code = "blocked" if exc.reason == "scheme" else "error"
                raise FetchFailed(
                    code, f"{current.host} redirected to {result.location[:200]!r}: {exc.message}"
                ) from exc
        raise FetchFailed("error", f"more than {self.settings.max_redirects} redirects from {url.href}")

    async def _with_retries(self, url: SourceURL, clock: _NetworkClock) -> Fetched | _Redirect:
        domain = url.host
        gate = self.book.gate(domain)
        attempt = 0
        while True:
            try:
                return await self._once(url.href, domain, gate, clock)
            except FetchFailed:
                self.ledger.failed(domain)
                raise
            except RETRYABLE as exc:
                self.ledger.failed(domain)
                failure = _describe(exc, domain)
                pause = random.uniform(0, self.settings.retry_backoff * 2**attempt)  # full jitter
                if attempt >= self.settings.retries or pause >= clock.left:
                    raise failure from exc
            attempt += 1
            logger.info("retrying %s in %.2f s (%s)", url.href, pause, failure.message)
            try:
                with clock.running():
                    await anyio.sleep(pause)
            except TimeoutError:  # pragma: no cover - the pause was shorter than what was left
                raise failure from None

    async def _once(self, url: str, domain: str, gate: DomainGate, clock: _NetworkClock) -> Fetched | _Redirect:
        limit = self.settings.max_image_bytes
        gate.check_budget(limit)  # before queueing: no point waiting for a turn we could not use
        async with gate.turn(self.settings.queue_timeout) as turn:
            # The largest image we would accept: the budget then holds whatever the source sends.
            await turn.reserve(limit)
            self.ledger.sent(domain)
            received = [0]
            try:
                with clock.running():
                    async with self.client.stream("GET", url) as response:
                        turn.responded()
                        return await self._read(response, domain, gate, received)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                # The WHATWG form was accepted but httpx reads it differently: this URL's failure only.
                raise FetchFailed("bad_url", f"the URL cannot be requested: {exc}") from exc
            except TimeoutError as exc:
                raise FetchFailed(
                    "timeout", f"{domain} did not deliver within {self.settings.total_timeout:g} s"
                ) from exc
            finally:
                turn.settle(received[0])
                self.ledger.finished(domain, received[0])

    async def _read(
        self, response: httpx.Response, domain: str, gate: DomainGate, received: list[int]
    ) -> Fetched | _Redirect:
        status = response.status_code
        if status in REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise FetchFailed("error", f"{domain} answered {status} without a Location")
            return _Redirect(location)
        if status in (404, 410):
            raise _Answered("not_found", f"{domain} has no image at that URL ({status})", status)
        if status in (429, 503):
            asked = parse_retry_after(response.headers.get("retry-after"))
            wait = min(self.settings.backoff_seconds if asked is None else asked, self.settings.max_backoff_seconds)
            gate.back_off(wait)
            raise FetchFailed("rate_limited", f"{domain} answered {status}; leaving it alone for {wait:.0f} s", wait)
        if status >= 500:
            raise _Answered("error", f"{domain} answered {status}", status)
        if status not in (200, 203):
            raise FetchFailed("error", f"{domain} answered {status}")
        refusal = content_type_refusal(response.headers.get("content-type"))
        if refusal:
            raise FetchFailed("not_an_image", f"{domain}: {refusal}")
        limit = self.settings.max_image_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchFailed("too_large", f"{domain} would send {int(declared)} bytes; the limit is {limit}")
        chunks: list[bytes] = []
        checked = False
        # Raw bytes: we asked for no content encoding, and inflating one would dodge the cap.
        async for chunk in response.aiter_raw():
            received[0] += len(chunk)
            if received[0] > limit:
                raise FetchFailed("too_large", f"{domain} sent more than the limit of {limit} bytes")
            chunks.append(chunk)
            if not checked and received[0] >= MAGIC_BYTES_NEEDED:
                self._check_magic(b"".join(chunks), domain)
                checked = True
        data = b"".join(chunks)
        if not checked:
            self._check_magic(data, domain)
        return Fetched(url=str(response.url), data=data, content_type=response.headers.get("content-type"))

    @staticmethod
    def _check_magic(head: bytes, domain: str) -> None:
        if not looks_like_image(head[:MAGIC_BYTES_NEEDED]):
            what = "nothing" if not head else "bytes that are not a supported image format"
            raise FetchFailed("not_an_image", f"{domain} sent {what}")
