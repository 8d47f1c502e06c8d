"""Responses of the fetcher service (its images are plain bytes; these are its JSON answers)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ImageSize = Literal["thumb", "medium", "full"]


class DomainStats(BaseModel):
    domain: str
    requests: int = Field(description="Requests sent to the domain in the last hour.")
    bytes: int = Field(description="Bytes received from the domain in the last hour.")
    errors: int = Field(description="Failed fetches from the domain in the last hour.")


class FetcherStats(BaseModel):
    window_seconds: int
    domains: list[DomainStats]
    fetches: int = Field(description="Fetches since start-up.")
    failures: int = Field(description="Failed fetches since start-up.")
