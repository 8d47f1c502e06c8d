"""The settings every service has; each service subclasses it with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in a container).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    log_level: str = Field("INFO", description="Python logging level.")
    blocking_threads: int = Field(
        4, ge=1, le=64, description="Threads for blocking work (model, FAISS, DuckDB, Pillow)."
    )
