"""The gateway's calls to the embedder, search and fetcher services, over one shared httpx client.

Each service gets a bounded number of calls in flight, so one slow service cannot take every
connection (gateway/admission.py). Every call has one deadline, its service's timeout, which covers
both the wait for a slot and the call itself. All the calls here are idempotent (GETs, and POSTs
that compute without changing anything: embed, classify, search), so each is sent once more when
the service closed a kept-alive connection under it (services/common/http.py).

The embedder and search may run as several replicas: each call goes to one of them and moves on to
another when one is down (gateway/replicas.py). The fetcher is one process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import IO, Any

import httpx
from cachetools import TTLCache

from gateway.admission import CallSlots
from gateway.errors import ModelIndexMismatch
from gateway.replicas import Replica, Upstream
from gateway.settings import GatewaySettings
from services.common.errors import DomainError
from services.common.http import raise_for_upstream, upstream, upstream_error
from services.common.schemas.embedder import ClassifyResponse, EmbedResponse
from services.common.schemas.search import Record, SearchRequest, SearchResponse, TaxonSuggestions
from services.common.vocabulary import TaxonFilter

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
class ReplicaReadiness:
    url: str
    ready: bool
    reason: str | None


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
        # As configured (what /internal/health shows); the replicas behind each are in `upstreams`.
        self.urls = {
            "embedder": settings.embedder_url,
            "search": settings.search_url,
            "fetcher": settings.fetcher_url.rstrip("/"),
        }
        spread = {"backoff": settings.replica_backoff, "max_backoff": settings.replica_max_backoff}
        resolve = settings.resolve_interval > 0
        self.upstreams = {
            "embedder": Upstream("embedder", settings.embedder_urls, resolve=resolve, **spread),
            "search": Upstream("search", settings.search_urls, resolve=resolve, **spread),
            # One fetcher owns the image sources' budgets: called at its URL as given, never spread.
            "fetcher": Upstream("fetcher", [self.urls["fetcher"]], resolve=False, **spread),
        }
        sizes = {
            "embedder": settings.max_concurrent_embeds,
            "search": settings.max_concurrent_searches,
            "fetcher": settings.max_concurrent_images,
        }
        self.slots = {
            service: CallSlots(
                service,
                size,
                max_waiting=settings.max_waiting_calls,
                max_wait=settings.queue_wait,
                retry_after=settings.shed_retry_after,
            )
            for service, size in sizes.items()
        }
        # One entry; used from the event loop only, so no lock.
        self._identity: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=1, ttl=IDENTITY_TTL_SECONDS)

    def _timeout(self, read: float) -> httpx.Timeout:
        return httpx.Timeout(connect=min(self.settings.connect_timeout, read), read=read, write=read, pool=read)

    async def _call(
        self, service: str, method: str, path: str, timeout: float, *, cheap: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One idempotent call, queueing included, within `timeout` seconds (the request's deadline). `cheap`: a
        call every live replica answers at once, so a replica that times out on it is left out as stalled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        headers = kwargs.pop("headers", None) or {}

        async def send(replica: Replica) -> httpx.Response:
            # What is left of the deadline, for the first try and for any further one alike.
            left = max(deadline - loop.time(), 0.001)
            url, host, extensions = replica.target(path)
            return await self.client.request(
                method, url, timeout=self._timeout(left), headers={**headers, **host}, extensions=extensions, **kwargs
            )

        async with self.slots[service].hold(deadline):
            with upstream(service):
                response = await self.upstreams[service].call(send, deadline=deadline, cheap=cheap)
        raise_for_upstream(service, response)
        return response

    async def resolve(self) -> None:
        """Resolve the services' host names into replica addresses (once; see `keep_resolving`)."""
        await asyncio.gather(*(upstream.refresh() for upstream in self.upstreams.values()))

    async def keep_resolving(self) -> None:
        """Resolve again every `resolve_interval` seconds, until cancelled (the app's lifespan)."""
        if self.settings.resolve_interval <= 0 or not any(u.resolves for u in self.upstreams.values()):
            return
        while True:
            await asyncio.sleep(self.settings.resolve_interval)
            try:
                await self.resolve()
            except Exception:  # one bad round must not end resolving for the process's life
                logger.exception("resolving the services' replicas failed")

    async def embed_images(self, images: list[tuple[str, IO[bytes], str]]) -> EmbedResponse:
        """Vectors of uploaded photos: (file name, file, content type); files stream from where they are
        (a spooled temporary file), rewound by httpx if the call is sent again."""
        files = [("images", image) for image in images]
        response = await self._call("embedder", "POST", "/v1/embed/image", self.settings.embed_timeout, files=files)
        return EmbedResponse.model_validate(response.json())

    async def embed_texts(self, texts: list[str]) -> EmbedResponse:
        response = await self._call(
            "embedder", "POST", "/v1/embed/text", self.settings.embed_timeout, json={"texts": texts}
        )
        return EmbedResponse.model_validate(response.json())

    async def classify(
        self, vector: list[float], rank: str, k: int, clade: TaxonFilter | None = None
    ) -> ClassifyResponse:
        """Zero-shot prediction at `rank`; within `clade` (a rank at or above `rank`) when given."""
        body: dict[str, Any] = {"vector": vector, "rank": rank, "k": k}
        if clade is not None:
            body["clade"] = {"rank": clade.rank, "value": clade.value}
        response = await self._call("embedder", "POST", "/v1/classify", self.settings.embed_timeout, json=body)
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

    async def taxa(self, prefix: str, rank: str | None, limit: int) -> TaxonSuggestions:
        params: dict[str, str | int] = {"prefix": prefix, "limit": limit}
        if rank:
            params["rank"] = rank
        response = await self._call("search", "GET", "/v1/taxa", self.settings.search_timeout, params=params)
        return TaxonSuggestions.model_validate(response.json())

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
            response = await self._call(service, "GET", path, self.settings.connect_timeout, cheap=True)
        except DomainError as exc:
            logger.info("%s%s unavailable: %s", service, path, exc.message)
            return None
        return response.json()

    async def identity(self) -> dict[str, str | None]:
        """The model and index in use, asked at most every 30 s (it changes only on redeploy)."""
        known = await self.provenance()
        return {"model": known["model"], "index": known["index"]}

    async def provenance(self) -> dict[str, Any]:
        """`identity()` plus the collection's pin (`{"repo", "revision", "commit"}` from the search
        service's /v1/stats, or None), cached with it."""
        if (known := self._identity.get("identity")) is not None:
            return known
        model, stats = await asyncio.gather(
            self.json_or_none("embedder", "/v1/model"), self.json_or_none("search", "/v1/stats")
        )
        found: dict[str, Any] = {
            "model": str(model["model"]) if model else None,
            "index": index_identity(stats) if stats else None,
            "collection": stats.get("collection") if stats else None,
        }
        if model and stats:
            self._identity["identity"] = found
        return found

    async def readiness(self, service: str) -> list[ReplicaReadiness]:
        """Each replica's /readyz, asked at once; what they say also updates which replicas take calls."""
        timeout = self._timeout(self.settings.connect_timeout)

        async def ask(replica: Replica) -> httpx.Response:
            url, host, extensions = replica.target("/readyz")
            return await self.client.get(url, timeout=timeout, headers=host, extensions=extensions)

        found = []
        for replica, answer in await self.upstreams[service].probe(ask):
            if isinstance(answer, httpx.HTTPError):
                found.append(ReplicaReadiness(replica.url, False, upstream_error(service, answer).message))
                continue
            if answer.status_code == 200:
                found.append(ReplicaReadiness(replica.url, True, None))
                continue
            try:
                reason = answer.json().get("reason") or f"status {answer.status_code}"
            except ValueError:
                reason = f"status {answer.status_code}"
            found.append(ReplicaReadiness(replica.url, False, reason))
        return found
