"""Fetch an image's bytes from its source: identifying User-Agent, size cap, total deadline."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx

from services.common.errors import ServiceError
from services.common.schemas.fetcher import DomainStats, FetcherStats
from services.fetcher.settings import FetcherSettings

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 3600


class FetchFailed(ServiceError):
    """The source did not give us an image. `code` is one of the fetcher's status words."""

    status_code = 502
    code = "error"


def refusal(code: str, message: str, retry_after: int | None = None) -> FetchFailed:
    status = {
        "not_found": 404,
        "blocked": 403,
        "bad_url": 400,
        "timeout": 504,
        "rate_limited": 429,
        "too_large": 502,
        "not_an_image": 502,
    }.get(code, 502)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return FetchFailed(message, code=code, status_code=status, headers=headers)


@dataclass(frozen=True)
class Fetched:
    url: str
    data: bytes
    content_type: str | None


class DomainLedger:
    """Requests, bytes and errors per domain over a sliding hour."""

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, int, bool]]] = defaultdict(deque)
        self.fetches = 0
        self.failures = 0

    def record(self, domain: str, size: int, ok: bool) -> None:
        self.fetches += 1
        self.failures += 0 if ok else 1
        self._events[domain].append((time.monotonic(), size, ok))

    def snapshot(self) -> FetcherStats:
        cutoff = time.monotonic() - WINDOW_SECONDS
        domains = []
        for domain, events in sorted(self._events.items()):
            while events and events[0][0] < cutoff:
                events.popleft()
            if events:
                domains.append(
                    DomainStats(
                        domain=domain,
                        requests=len(events),
                        bytes=sum(size for _, size, _ in events),
                        errors=sum(1 for _, _, ok in events if not ok),
                    )
                )
        return FetcherStats(
            window_seconds=WINDOW_SECONDS, domains=domains, fetches=self.fetches, failures=self.failures
        )


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise refusal("bad_url", f"only http and https URLs can be fetched, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise refusal("bad_url", "the URL has no host")
    return parts.hostname.lower()


class ImageFetcher:
    def __init__(self, client: httpx.AsyncClient, settings: FetcherSettings) -> None:
        self.client = client
        self.settings = settings
        self.ledger = DomainLedger()

    async def fetch(self, url: str) -> Fetched:
        domain = check_url(url)
        received = 0
        try:
            # httpx's read timeout is per chunk; a source that trickles must still end.
            with anyio.fail_after(self.settings.total_timeout):
                fetched, received = await self._download(url)
        except TimeoutError as exc:
            self.ledger.record(domain, received, ok=False)
            raise refusal(
                "timeout", f"{domain} did not send the image within {self.settings.total_timeout:g} s"
            ) from exc
        except httpx.TimeoutException as exc:
            self.ledger.record(domain, received, ok=False)
            raise refusal("timeout", f"{domain} timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            self.ledger.record(domain, received, ok=False)
            raise refusal("error", f"could not fetch from {domain}: {type(exc).__name__}: {exc}") from exc
        except FetchFailed:
            self.ledger.record(domain, received, ok=False)
            raise
        self.ledger.record(domain, len(fetched.data), ok=True)
        return fetched

    async def _download(self, url: str) -> tuple[Fetched, int]:
        limit = self.settings.max_image_bytes
        async with self.client.stream("GET", url) as response:
            domain = response.url.host
            if response.status_code in (404, 410):
                raise refusal("not_found", f"{domain} has no image at that URL ({response.status_code})")
            if response.status_code == 429:
                retry = response.headers.get("retry-after", "")
                raise refusal(
                    "rate_limited", f"{domain} asked us to slow down", int(retry) if retry.isdigit() else None
                )
            if response.status_code >= 400:
                raise refusal("error", f"{domain} answered {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise refusal("too_large", f"{domain} sent {int(declared)} bytes; the limit is {limit}")
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > limit:
                    raise refusal("too_large", f"{domain} sent more than the limit of {limit} bytes")
                chunks.append(chunk)
            content_type = response.headers.get("content-type")
        return Fetched(url=url, data=b"".join(chunks), content_type=content_type), received
