"""Typed dependencies the fetcher's routes take: the image pipeline and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.fetcher.pipeline import ImagePipeline
from services.fetcher.settings import FetcherSettings


def get_pipeline(request: Request) -> ImagePipeline:
    return request.app.state.pipeline


def get_settings(request: Request) -> FetcherSettings:
    return request.app.state.settings


PipelineDep = Annotated[ImagePipeline, Depends(get_pipeline)]
SettingsDep = Annotated[FetcherSettings, Depends(get_settings)]
