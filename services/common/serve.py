"""Run a service app under uvicorn: `python -m services.<name>` calls this."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.common.logging import configure_logging
from services.common.settings import ServiceSettings


def serve(service: str, create_app: Callable[[Any], FastAPI], settings: ServiceSettings) -> int:
    """Serve until stopped; the exit status is 1 when the app recorded a fatal error.

    An app that fails after start-up (a model loading in the background, say) records the reason
    in `app.state.fatal_error` and calls `app.state.stop_server()`, which ends the server here.
    """
    configure_logging(service, settings.log_level)
    app = create_app(settings)
    server = uvicorn.Server(
        # proxy_headers off: uvicorn would otherwise trust X-Forwarded-For from 127.0.0.1, i.e. from any
        # local client; the gateway applies it itself, from GATEWAY_TRUSTED_PROXIES only.
        uvicorn.Config(
            app, host=settings.host, port=settings.port, log_config=None, access_log=False, proxy_headers=False
        )
    )
    app.state.stop_server = lambda: setattr(server, "should_exit", True)
    server.run()
    return 1 if app.state.fatal_error else 0
