"""Run a service app under uvicorn: `python -m services.<name>` calls this."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from services.common.logging import configure_logging
from services.common.settings import ServiceSettings


def serve(service: str, create_app: Callable[[ServiceSettings], FastAPI], settings: ServiceSettings) -> None:
    configure_logging(service, settings.log_level)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
