"""Requests and responses of the fetcher service (its images are plain bytes; these are its JSON answers)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from services.common.vocabulary import ImageSize

__all__ = ["ImageSize"]

StatusWord = Literal[
    "ok",
    "bad_url",
    "not_found",
    "timeout",
    "rate_limited",
    "budget_exhausted",
    "blocked",
    "too_large",
    "not_an_image",
    "error",
]
CacheOutcome = Literal["memory", "disk", "miss", "shared"]

MAX_BATCH_URLS = 64


class BatchRequest(BaseModel):
    urls: list[Annotated[str, StringConstraints(min_length=1, max_length=2048)]] = Field(
        min_length=1, max_length=MAX_BATCH_URLS, description="Source URLs, each answered on its own."
    )
    size: ImageSize = Field("thumb", description="thumb, medium or full, for every URL.")
    include_data: bool = Field(False, description="Send each image's bytes back, base64-encoded, in `data`.")


class BatchItem(BaseModel):
    url: str
    status: StatusWord = Field(description="What became of this URL.")
    message: str | None = Field(None, description="What happened, for people; null when ok.")
    retry_after: int | None = Field(None, description="Seconds to wait before asking again, when known.")
    media_type: str | None = Field(None, description="image/webp or image/jpeg, when ok.")
    etag: str | None = Field(None, description="The image's ETag (as GET /v1/image sends it), when ok.")
    bytes: int | None = Field(None, description="Size of the rendered image, when ok.")
    cache: CacheOutcome | None = Field(
        None, description="memory or disk: served from a cache; miss: fetched now; shared: joined a fetch in flight."
    )
    data: str | None = Field(None, description="The image, base64-encoded, when ok and include_data was asked for.")


class BatchResponse(BaseModel):
    size: ImageSize
    results: list[BatchItem] = Field(description="One per URL, in the order asked.")
    counts: dict[str, int] = Field(description="How many URLs ended with each status.")
    took_ms: float


class BudgetStats(BaseModel):
    window_seconds: float
    limit_bytes: int
    used_bytes: int = Field(description="Received in the window so far, plus what fetches in flight may still use.")


class DomainStats(BaseModel):
    domain: str
    requests: int = Field(
        description="Requests sent to the domain in the last hour (retries and redirects each count)."
    )
    bytes: int = Field(description="Bytes received from the domain in the last hour.")
    errors: int = Field(description="Failed or refused requests to the domain in the last hour.")
    in_flight: int = Field(0, description="Requests to the domain under way now.")
    policy: str = Field("*", description="The policy that covers the domain (its key in FETCHER_DOMAIN_POLICIES).")
    waiting: int = Field(0, description="Requests waiting for the policy's turn now.")
    backoff_seconds: float = Field(0.0, description="Seconds left of a back-off the source asked for (429/503).")
    budgets: list[BudgetStats] = Field(default_factory=list, description="The policy's byte budgets and their use.")


class CacheStats(BaseModel):
    hits: int = Field(description="Images served from memory or disk since start-up.")
    misses: int = Field(description="Images that had to be fetched (or joined a fetch in flight).")
    hit_rate: float | None = Field(description="hits / (hits + misses); null before the first image.")
    memory_hits: int
    disk_hits: int
    shared: int = Field(description="Misses that joined a fetch already in flight instead of fetching again.")
    entries: int = Field(description="Images on disk.")
    bytes: int = Field(description="Bytes on disk.")
    max_bytes: int
    evictions: int = Field(description="Images evicted from disk since start-up (least recently used first).")
    memory_entries: int
    memory_bytes: int
    memory_max_bytes: int


class RecentError(BaseModel):
    at: datetime
    domain: str
    url: str
    code: str
    message: str


class FetcherStats(BaseModel):
    window_seconds: int
    domains: list[DomainStats] = Field(description="Domains with traffic in the last hour or requests in flight.")
    fetches: int = Field(description="Fetches from sources since start-up (cache hits are not fetches).")
    failures: int = Field(description="Failed fetches since start-up.")
    in_flight: int = Field(0, description="Requests to all sources under way now.")
    cache: CacheStats | None = None
    recent_errors: list[RecentError] = Field(default_factory=list, description="The last failed fetches, newest last.")
