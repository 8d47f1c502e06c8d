"""Gateway settings, from GATEWAY_* environment variables."""

from __future__ import annotations

from pydantic import Field
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
    image_timeout: float = Field(30.0, gt=0, description="Seconds the fetcher may take to bring an image.")
    max_connections: int = Field(64, ge=1, description="Open connections to the services together.")
    max_upload_bytes: int = Field(20_000_000, ge=1, description="Largest request body (an upload), in bytes.")
    notice: str = Field("", description="A line the page shows above everything (the demo says so here).")
    user_agent: str = Field("bioclip-image-search-gateway/0.1", description="User-Agent sent to the services.")
