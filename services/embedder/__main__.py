"""`python -m services.embedder`: run the embedder with settings from EMBEDDER_* variables.

torch, open_clip and the model load after the server starts (so /healthz answers meanwhile); if it cannot be loaded,
the log's one error line says which setting to change and the process exits with status 1.
"""

from services.common.serve import serve
from services.embedder.app import create_app
from services.embedder.settings import EmbedderSettings

raise SystemExit(serve("embedder", create_app, EmbedderSettings()))
