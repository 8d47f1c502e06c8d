"""`python -m services.embedder`: run the embedder with settings from EMBEDDER_* variables."""

from services.common.serve import serve
from services.embedder.app import create_app
from services.embedder.settings import EmbedderSettings

serve("embedder", create_app, EmbedderSettings())
