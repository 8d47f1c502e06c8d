"""Fetcher settings, from FETCHER_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class FetcherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FETCHER_", extra="ignore")

    port: int = Field(8003, ge=1, le=65535, description="TCP port to listen on.")
    user_agent: str = Field(
        "bioclip-image-search/0.1 (+https://github.com/imageomics/bioclip-image-search)",
        description="Identifying User-Agent, with a contact URL, sent with every request to a source.",
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to a source.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds to wait for each chunk from a source.")
    total_timeout: float = Field(20.0, gt=0, description="Seconds a whole fetch may take, however it trickles.")
    max_connections: int = Field(32, ge=1, description="Open connections to all sources together.")
    max_image_bytes: int = Field(20_000_000, ge=1, description="Largest image accepted from a source, in bytes.")
    max_image_pixels: int = Field(89_478_485, ge=1, description="Largest decoded image, in pixels.")
    thumb_pixels: int = Field(256, ge=16, description="Longest side of a `thumb` image.")
    medium_pixels: int = Field(768, ge=16, description="Longest side of a `medium` image.")
    thumb_format: str = Field("WEBP", pattern="^(WEBP|JPEG)$", description="Encoding of thumb and medium images.")
    browser_cache_seconds: int = Field(86_400, ge=0, description="Cache-Control max-age for images sent.")
