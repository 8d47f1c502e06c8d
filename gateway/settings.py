"""Gateway settings, from GATEWAY_* environment variables."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


def check_base_url(entry: str) -> str:
    """`entry` stripped, if it is an http(s) base URL: scheme, host, optional port and path, nothing else."""
    url = entry.strip()
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 1 <= parts.port <= 65535
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        port_ok = False
    if not port_ok or parts.username or parts.password or any(c.isspace() for c in url):
        raise ValueError(
            f"{url!r} is not an http(s) base URL; give one, or several separated by commas "
            "(e.g. http://10.0.0.5:8001,http://10.0.0.6:8001)"
        )
    return url.rstrip("/")


def _replica_key(url: str) -> tuple[str, str, int, str]:
    """What makes two base URLs the same replica: scheme and host in any case, the port with its default."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80), parts.path


def base_urls(value: str) -> list[str]:
    """The base URLs of a comma-separated setting, each without a trailing slash."""
    return [check_base_url(entry) for entry in value.split(",")]


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    embedder_url: str = Field(
        "http://127.0.0.1:8001",
        description=(
            "Base URL of the embedder service; several replicas: comma-separated base URLs "
            "(`http://10.0.0.5:8001,http://10.0.0.6:8001`), and/or a host name that resolves to several "
            "addresses, each of which is then a replica (see GATEWAY_RESOLVE_INTERVAL)."
        ),
    )
    search_url: str = Field(
        "http://127.0.0.1:8002",
        description="Base URL of the search service; several replicas as for GATEWAY_EMBEDDER_URL.",
    )
    fetcher_url: str = Field(
        "http://127.0.0.1:8003",
        description=(
            "Base URL of the fetcher service: one URL, called as given (never spread over the addresses its "
            "name resolves to). One fetcher process owns the per-domain request and byte budgets of the "
            "image sources."
        ),
    )
    resolve_interval: float = Field(
        5.0,
        ge=0,
        description=(
            "Seconds between resolving the host names in GATEWAY_EMBEDDER_URL and GATEWAY_SEARCH_URL again; "
            "every address a name resolves to is a replica (compose's `deploy.replicas`, a Kubernetes "
            "headless Service). 0: names are not resolved by the gateway (one replica per URL)."
        ),
    )
    replica_backoff: float = Field(
        1.0,
        gt=0,
        description=(
            "Seconds a replica that refused or dropped a connection, did not accept one in time, or answered "
            "503 for itself (loading) is left out; doubled for each further failure in a row, up to "
            "GATEWAY_REPLICA_MAX_BACKOFF."
        ),
    )
    replica_max_backoff: float = Field(30.0, gt=0, description="Longest time, in seconds, a replica is left out.")
    connect_timeout: float = Field(3.0, gt=0, description="Seconds to connect to a service.")
    embed_timeout: float = Field(60.0, gt=0, description="Seconds the embedder may take to answer.")
    search_timeout: float = Field(30.0, gt=0, description="Seconds the search service may take to answer.")
    image_timeout: float = Field(
        35.0, gt=0, description="Seconds the fetcher may take to bring an image (its queue wait plus its fetch)."
    )
    max_connections: int = Field(64, ge=1, description="Open connections to the services together.")
    max_upload_bytes: int = Field(20_000_000, ge=1, description="Largest request body (an upload), in bytes.")
    max_images_per_query: int = Field(8, ge=1, le=32, description="Most photos of one organism per query.")
    query_cache_size: int = Field(10_000, ge=1, description="Query vectors kept for re-runs (about 3 KB each).")
    max_concurrent_embeds: int = Field(8, ge=1, description="Embedder calls in flight at once.")
    max_concurrent_searches: int = Field(16, ge=1, description="Search service calls in flight at once.")
    max_concurrent_images: int = Field(32, ge=1, description="Fetcher calls in flight at once.")
    max_waiting_calls: int = Field(
        32, ge=0, description="Calls that may wait for a free slot to one service; beyond, 503 + Retry-After at once."
    )
    queue_wait: float = Field(
        2.0,
        gt=0,
        description="Seconds a call may wait for a free slot to a service (never past its timeout) before 503.",
    )
    max_concurrent_uploads: int = Field(
        8, ge=1, description="Photo searches whose uploads are in flight at once; beyond, 503 + Retry-After at once."
    )
    shed_retry_after: float = Field(2.0, gt=0, description="Retry-After, in seconds, on a 503 that sheds load.")
    served_images: int = Field(
        20_000, ge=0, description="Image URLs of recently served hits kept, so their images are served without search."
    )
    searches_per_minute: int = Field(60, ge=1, description="Searches and exports one client may make per minute.")
    images_per_minute: int = Field(1200, ge=1, description="Image requests one client may make per minute.")
    trusted_proxies: str = Field(
        "",
        description=(
            "Comma-separated addresses or networks (CIDR) of the reverse proxies in front of the gateway. "
            "A request from one of them is taken to come from the address the proxy saw: the rightmost "
            "X-Forwarded-For entry not itself a trusted proxy (uvicorn's proxy-headers rule). Empty: none "
            "trusted, X-Forwarded-For ignored, rate limits key on the connecting address."
        ),
    )
    cors_origins: str = Field(
        "",
        description=(
            "Comma-separated origins (`https://lab.example.org`) whose pages may call the API from a browser "
            "(CORS: GET, HEAD and POST, the `Content-Type` and `X-Request-ID` request headers). `*`: any origin. "
            "Empty: none; the gateway's own page needs none."
        ),
    )
    predictions: int = Field(5, ge=1, le=50, description="Zero-shot predictions returned per search.")
    example_records: list[int] = Field(
        default_factory=list,
        description="Record ids the page offers as examples to search from (a JSON list); empty: the first "
        "records with an image.",
    )
    examples: int = Field(4, ge=0, le=12, description="How many examples the page offers (0: none).")
    preview_pixels: int = Field(
        320, ge=16, le=2048, description="Longest side of the JPEG preview of an upload (POST /api/preview)."
    )
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description="Largest upload decoded for a preview, in pixels; a larger JPEG is decoded at reduced scale.",
    )
    max_concurrent_previews: int = Field(2, ge=1, description="Previews decoded at once (each a thread).")
    notice: str = Field("", description="A line the page shows above everything (the demo says so here).")
    user_agent: str = Field("bioclip-image-search-gateway/0.1", description="User-Agent sent to the services.")

    @property
    def embedder_urls(self) -> list[str]:
        return base_urls(self.embedder_url)

    @property
    def search_urls(self) -> list[str]:
        return base_urls(self.search_url)

    @field_validator("embedder_url", "search_url")
    @classmethod
    def _replica_urls(cls, value: str) -> str:
        urls = [check_base_url(entry) for entry in value.split(",")]
        # One replica spelled two ways (a default port written out, capitals in the scheme or host) is still one.
        keys = [_replica_key(url) for url in urls]
        repeated = sorted({url for url, key in zip(urls, keys, strict=True) if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"{repeated[0]} is listed twice; list each replica once")
        return value

    @field_validator("fetcher_url")
    @classmethod
    def _one_fetcher(cls, value: str) -> str:
        if "," in value:
            raise ValueError(
                "give one fetcher URL: one fetcher process owns the per-domain request and byte budgets "
                "of the image sources, so the fetcher is not run as several replicas"
            )
        check_base_url(value)
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        # An origin is scheme://host[:port] and nothing more; a path or a typo would never match a browser's.
        for entry in filter(None, (item.strip().rstrip("/") for item in value.split(","))):
            if entry != "*" and not re.fullmatch(r"https?://[^/\s?#]+", entry):
                raise ValueError(f"{entry!r} is not an origin (scheme://host[:port]) or *")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        # uvicorn would take a mistyped entry as a literal name that never matches: refuse it here.
        for entry in filter(None, (item.strip() for item in value.split(","))):
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value
