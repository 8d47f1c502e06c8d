"""What an answer to the public may say about the inside: reasons without addresses or paths.

Behind the reverse proxy, `GET /api/health` is public; its reasons come from the services
(`/readyz`) and from httpx errors, which may name internal URLs, host:port pairs, IP addresses or
file paths. Those are replaced by a placeholder; the rest of the reason stays. `GET /api/info` shows
the embedder's model without the folder its checkpoint lies in.
"""

from __future__ import annotations

import logging
import re
from pathlib import PurePath

logger = logging.getLogger(__name__)

HIDDEN = "[internal]"
_INTERNAL = re.compile(
    r"""
    [a-z][a-z0-9+.-]*://[^\s'",)]+                  # any URL
    | \[[0-9a-f:.%\w]*:[0-9a-f:.%\w]*\](?::\d+)?        # bracketed IPv6, with an optional port
    | (?<![\w:])(?=[0-9a-f:.]*::)[0-9a-f:.]*[0-9a-f:](?:%\w+)?  # IPv6 with "::"
    | \b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b          # IPv6 in full
    | \b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b          # IPv4, with an optional port
    | \b[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{2,5}\b  # host:port
    | (?<![\w.])(?:/[\w.@+-]+){2,}/?                # an absolute path of two or more parts
    """,
    re.IGNORECASE | re.VERBOSE,
)


def redact(reason: str | None) -> str | None:
    """`reason` with URLs, addresses, host:port pairs and absolute paths replaced by HIDDEN."""
    if reason is None:
        return None
    return _INTERNAL.sub(HIDDEN, reason)


def public_model(model: dict[str, object] | None) -> dict[str, object] | None:
    """The embedder's /v1/model with `checkpoint` cut to the file's name: the folder is the operator's.
    The model's name (an `hf-hub:` name when loaded from the hub) stays as it is."""
    if model is None or not isinstance(model.get("checkpoint"), str):
        return model
    return {**model, "checkpoint": PurePath(str(model["checkpoint"])).name}
