"""`python -m services.embedder`: run the embedder with settings from EMBEDDER_* variables.

The model loads after the server starts (so /healthz answers meanwhile); if it cannot be loaded,
the log's one error line says which setting to change and the process exits with status 1.
"""

from __future__ import annotations

import sys

import uvicorn

from services.common.logging import configure_logging
from services.embedder.app import create_app
from services.embedder.settings import EmbedderSettings


def main() -> int:
    settings = EmbedderSettings()
    configure_logging("embedder", settings.log_level)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    )
    server.run()
    return 1 if app.state.load_error else 0


if __name__ == "__main__":
    sys.exit(main())
