"""The gateway's calls to the embedder, search and fetcher services, over one shared httpx client.

Each service gets a bounded number of calls in flight, so one slow service cannot take every
connection, and every call has its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from cachetools import TTLCache

from gateway.errors import ModelIndexMismatch
from gateway.settings import GatewaySettings
from services.common.errors import DomainError
from services.common.http import raise_for_upstream, upstream
from services.common.schemas.embedder import ClassifyResponse, EmbedResponse
from services.common.schemas.search import Record, SearchRequest, SearchResponse

logger = logging.getLogger(__name__)

IDENTITY_TTL_SECONDS = 30.0


def index_identity(stats: dict[str, Any]) -> str:
    """What a permalink records of the index: a downloaded collection's `repo@commit` (12 hex digits),
    else its type and shape."""
    pin = stats.get("collection")
    if pin:
        return f"{pin['repo']}@{str(pin['commit'])[:12]}"
    return f"{stats['index_type']}:{stats['vectors']}x{stats['dim']}"


@dataclass(frozen=True)
class ImageBytes:
    data: bytes
    media_type: str
    headers: dict[str, str]
    not_modified: bool = False


class ServiceClients:
    def __init__(self, client: httpx.AsyncClient, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings
        self.urls = {
            "embedder": settings.embedder_url.rstrip("/"),
            "search": settings.search_url.rstrip("/"),
            "fetcher": settings.fetcher_url.rstrip("/"),
        }
        self._slots = {
            "embedder": asyncio.Semaphore(settings.max_concurrent_embeds),
            "search": asyncio.Semaphore(settings.max_concurrent_searches),
            "fetcher": asyncio.Semaphore(settings.max_concurrent_images),
        }
        # One entry; used from the event loop only, so no lock.
        self._identity: TTLCache[str, dict[str, str | None]] = TTLCache(maxsize=1, ttl=IDENTITY_TTL_SECONDS)

    def _timeout(self, read: float) -> httpx.Timeout:
        return httpx.Timeout(connect=self.settings.connect_timeout, read=read, write=read, pool=read)

    async def _call(self, service: str, method: str, path: str, read: float, **kwargs: Any) -> httpx.Response:
        async with self._slots[service]:
            with upstream(service):
                response = await self.client.request(
                    method, self.urls[service] + path, timeout=self._timeout(read), **kwargs
                )
        raise_for_upstream(service, response)
        return response

    async def embed_images(self, images: list[tuple[str, bytes, str]]) -> EmbedResponse:
        files = [("images", image) for image in images]
        response = await self._call("embedder", "POST", "/v1/embed/image", self.settings.embed_timeout, files=files)
        return EmbedResponse.model_validate(response.json())

    async def embed_texts(self, texts: list[str]) -> EmbedResponse:
        response = await self._call(
            "embedder", "POST", "/v1/embed/text", self.settings.embed_timeout, json={"texts": texts}
        )
        return EmbedResponse.model_validate(response.json())

    async def classify(self, vector: list[float], rank: str, k: int) -> ClassifyResponse:
        response = await self._call(
            "embedder", "POST", "/v1/classify", self.settings.embed_timeout,
            json={"vector": vector, "rank": rank, "k": k},
        )  # fmt: skip
        return ClassifyResponse.model_validate(response.json())

    async def search(self, request: SearchRequest) -> SearchResponse:
        try:
            response = await self._call(
                "search", "POST", "/v1/search", self.settings.search_timeout, json=request.model_dump(exclude_none=True)
            )
        except DomainError as exc:
            # The gateway checked the caller's parameters; a vector the index refuses is a set-up fault.
            if exc.code in ("dimension_mismatch", "invalid_vector"):
                raise ModelIndexMismatch(
                    f"the embedder's vectors do not fit the search index ({exc.message}); "
                    "the embedder must run the model the collection was built with"
                ) from exc
            raise
        return SearchResponse.model_validate(response.json())

    async def record(self, record_id: int) -> Record:
        response = await self._call("search", "GET", f"/v1/records/{record_id}", self.settings.search_timeout)
        return Record.model_validate(response.json())

    async def record_vector(self, record_id: int) -> list[float]:
        response = await self._call("search", "GET", f"/v1/records/{record_id}/vector", self.settings.search_timeout)
        return [float(value) for value in response.json()["vector"]]

    async def image(self, url: str, size: str, if_none_match: str | None) -> ImageBytes:
        """The fetcher's rendition of `url`, or `not_modified` when the browser's copy (ETag) is good."""
        headers = {"If-None-Match": if_none_match} if if_none_match else {}
        response = await self._call(
            "fetcher", "GET", "/v1/image", self.settings.image_timeout,
            params={"url": url, "size": size}, headers=headers,
        )  # fmt: skip
        passed = {k: v for k, v in response.headers.items() if k.lower() in ("etag", "cache-control")}
        if response.status_code == 304:
            return ImageBytes(b"", "", passed, not_modified=True)
        return ImageBytes(response.content, response.headers.get("content-type", "image/webp"), passed)

    async def json_or_none(self, service: str, path: str) -> dict[str, Any] | None:
        """A service's JSON answer, or None when it cannot give one (for informational answers)."""
        try:
            response = await self._call(service, "GET", path, self.settings.connect_timeout)
        except DomainError as exc:
            logger.info("%s%s unavailable: %s", service, path, exc.message)
            return None
        return response.json()

    async def identity(self) -> dict[str, str | None]:
        """The model and index in use, asked at most every 30 s (it changes only on redeploy)."""
        if (known := self._identity.get("identity")) is not None:
            return known
        model, stats = await asyncio.gather(
            self.json_or_none("embedder", "/v1/model"), self.json_or_none("search", "/v1/stats")
        )
        found = {
            "model": str(model["model"]) if model else None,
            "index": index_identity(stats) if stats else None,
        }
        if model and stats:
            self._identity["identity"] = found
        return found

    async def readiness(self, service: str) -> tuple[bool, str | None]:
        try:
            with upstream(service):
                response = await self.client.get(
                    self.urls[service] + "/readyz", timeout=self._timeout(self.settings.connect_timeout)
                )
        except DomainError as exc:
            return False, exc.message
        if response.status_code == 200:
            return True, None
        try:
            reason = response.json().get("reason") or f"status {response.status_code}"
        except ValueError:
            reason = f"status {response.status_code}"
        return False, reason
