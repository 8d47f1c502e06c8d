"""Typed dependencies the search service's routes take: the engine, the blocking pool, the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.errors import NotReady
from services.common.service import BlockingPool
from services.search.engine import SearchEngine
from services.search.settings import SearchSettings


def get_engine(request: Request) -> SearchEngine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the index and metadata are not loaded yet")
    return engine


def get_pool(request: Request) -> BlockingPool:
    return request.app.state.pool


def get_settings(request: Request) -> SearchSettings:
    return request.app.state.settings


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
PoolDep = Annotated[BlockingPool, Depends(get_pool)]
SettingsDep = Annotated[SearchSettings, Depends(get_settings)]
