"""Fetcher settings, from FETCHER_* environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.common.vocabulary import IMAGE_SIZES
from services.fetcher.policy import DEFAULT_POLICY_KEY, DomainPolicy
from services.fetcher.safety import Exemption, parse_networks

# iNaturalist's published limits for its own CDN are 1 request/s and 5 GB/hour, 24 GB/day of media
# (violators are banned for good); the budgets sit well under them. Its open-data bucket on S3 is
# AWS Open Data: parallel fetching is fine there. Wikimedia (upload.wikimedia.org) serves thumbnails of
# every original at standard widths: those are fetched rather than originals of many megabytes.


class _JsonDict(dict[str, Any]):
    """A dict that prints as JSON, so docs/operations.md shows the default as one would set it."""

    def __str__(self) -> str:
        return json.dumps(self)


BUILTIN_POLICIES: dict[str, dict[str, Any]] = _JsonDict(
    {
        "static.inaturalist.org": {
            "max_concurrency": 1,
            "requests_per_second": 1.0,
            "budgets": [{"bytes": 4_000_000_000, "seconds": 3600}, {"bytes": 20_000_000_000, "seconds": 86400}],
            "renditions": "inaturalist",
        },
        "inaturalist-open-data.s3.amazonaws.com": {"max_concurrency": 16, "renditions": "inaturalist"},
        "upload.wikimedia.org": {"max_concurrency": 2, "renditions": "wikimedia"},
        DEFAULT_POLICY_KEY: {"max_concurrency": 4},
    }
)


class FetcherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FETCHER_", extra="ignore")

    port: int = Field(8003, ge=1, le=65535, description="TCP port to listen on.")
    user_agent: str = Field(
        "bioclip-image-search/0.1 (+https://github.com/imageomics/bioclip-image-search)",
        description="Identifying User-Agent, with a contact URL, sent with every request to a source.",
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to a source.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds to wait for each chunk from a source.")
    total_timeout: float = Field(
        20.0,
        gt=0,
        description="Seconds a source has to deliver the image however it trickles, retries and redirects "
        "included (waiting for the domain's turn is not).",
    )
    queue_timeout: float = Field(
        10.0,
        ge=0,
        description="Longest wait for a domain's turn (its concurrency, request spacing, back-off) before "
        "answering rate_limited with Retry-After.",
    )
    retries: int = Field(2, ge=0, le=10, description="Retries after a timeout or connection error.")
    retry_backoff: float = Field(
        0.5, ge=0, description="Seconds of jittered back-off before the first retry, doubling for each next one."
    )
    backoff_seconds: float = Field(
        60.0, ge=0, description="How long a domain is left alone after a 429 or 503 that sent no Retry-After."
    )
    max_backoff_seconds: float = Field(
        3600.0, ge=0, description="Longest back-off a source's Retry-After can impose on its domain."
    )
    max_redirects: int = Field(3, ge=0, le=10, description="Redirects followed, each one checked like the URL.")
    max_connections: int = Field(32, ge=1, description="Open connections to all sources together.")
    max_image_bytes: int = Field(
        20_000_000, ge=1, description="Largest image accepted from a source, in bytes (reading stops past it)."
    )
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description="Largest decoded image, in pixels; a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale to fit, "
        "any other format is refused.",
    )
    thumb_pixels: int = Field(IMAGE_SIZES["thumb"], ge=16, description="Longest side of a `thumb` image.")
    medium_pixels: int = Field(IMAGE_SIZES["medium"], ge=16, description="Longest side of a `medium` image.")
    thumb_format: str = Field("WEBP", pattern="^(WEBP|JPEG)$", description="Encoding of thumb and medium images.")
    browser_cache_seconds: int = Field(86_400, ge=0, description="Cache-Control max-age for images sent.")
    domain_policies: dict[str, DomainPolicy] = Field(
        BUILTIN_POLICIES,  # type: ignore[arg-type]  # validated into DomainPolicy (validate_default)
        validate_default=True,
        description="Per-domain politeness as JSON: {domain: {max_concurrency, requests_per_second, budgets: "
        '[{bytes, seconds}], renditions: "inaturalist", "wikimedia" or null, not_found_seconds (how long a '
        "404/410 is remembered, default 3600), server_error_seconds (a 5xx other than 503, default 60)}}; "
        '"*" is every other host, and a domain also covers its subdomains. A value given is merged over '
        "these built-in ones domain by domain, so naming one domain never drops iNaturalist's limits.",
    )
    allow_private_networks: str = Field(
        "",
        description="Comma-separated CIDRs exempt from the refusal of private, loopback and link-local "
        "addresses on every port (e.g. 10.0.0.0/8 for a collection on the local network), or ADDRESS:PORT "
        "([IPv6]:PORT) for one address on one port (the offline demo's image source: 127.0.0.1:8010). Cloud "
        "metadata addresses stay refused.",
    )
    cache_dir: Path = Field(
        Path("var/cache/fetcher"),
        description="Folder of the disk cache of rendered images (and, unless budget_store says otherwise, "
        "of the byte budgets' store); relative to the working directory.",
    )
    budget_store: Path | None = Field(
        None,
        description="SQLite file recording every byte-budget reservation before its request leaves, so "
        "no crash or restart resets a budget; default budgets.sqlite3 in cache_dir. A budgets.json left "
        "there by an earlier version is read into it once.",
    )
    cache_max_bytes: int = Field(
        2_000_000_000, ge=0, description="Disk cache size; least recently used images go first. 0: no disk cache."
    )
    memory_cache_bytes: int = Field(
        32_000_000, ge=0, description="In-memory cache of the most recently served images. 0: none."
    )
    recent_errors: int = Field(20, ge=0, le=1000, description="Failed fetches kept for /v1/stats.")
    negative_cache_entries: int = Field(
        50_000,
        ge=0,
        description="Most negative answers (404/410/5xx by URL) remembered at once; each is kept for its "
        "domain's not_found_seconds or server_error_seconds. 0: none remembered.",
    )

    @field_validator("domain_policies", mode="after")
    @classmethod
    def _merge_over_builtin(cls, value: dict[str, DomainPolicy]) -> dict[str, DomainPolicy]:
        merged = {key: DomainPolicy.model_validate(policy) for key, policy in BUILTIN_POLICIES.items()}
        merged.update({key.lower().rstrip("."): policy for key, policy in value.items()})
        return merged

    @field_validator("allow_private_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _budgets_fit_one_image(self) -> FetcherSettings:
        # A fetch reserves the largest image it may receive: a smaller budget could never be met.
        for domain, policy in self.domain_policies.items():
            for budget in policy.budgets:
                if budget.bytes < self.max_image_bytes:
                    raise ValueError(
                        f"{domain}: a budget of {budget.bytes} bytes is smaller than one image "
                        f"(max_image_bytes = {self.max_image_bytes})"
                    )
        return self

    def allowed_networks(self) -> tuple[Exemption, ...]:
        return parse_networks(self.allow_private_networks)

    def budget_store_path(self) -> Path:
        return self.budget_store or self.cache_dir / "budgets.sqlite3"

    def sizes(self) -> dict[str, int | None]:
        """Longest side of each size word; None keeps the image's own size."""
        return {**IMAGE_SIZES, "thumb": self.thumb_pixels, "medium": self.medium_pixels}
