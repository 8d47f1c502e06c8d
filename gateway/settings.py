"""Gateway settings, from GATEWAY_* environment variables."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    embedder_url: str = Field("http://127.0.0.1:8001", description="Base URL of the embedder service.")
    search_url: str = Field("http://127.0.0.1:8002", description="Base URL of the search service.")
    fetcher_url: str = Field("http://127.0.0.1:8003", description="Base URL of the fetcher service.")
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
    predictions: int = Field(5, ge=1, le=50, description="Zero-shot predictions returned per search.")
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
