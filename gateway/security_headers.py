"""Hardening headers on every answer of the gateway: the page, its files and the API.

The Content-Security-Policy lets the page load scripts, styles, images and API answers from the
gateway's own origin only ('self'), plus images the page makes itself: `blob:` (the preview of the
photo being uploaded is an object URL) and `data:` (the empty favicon; an image cannot run script).
No inline script or style, no plugins, and no other site may put
the page in a frame. The interactive API docs (/docs, /redoc) are FastAPI's, which load Swagger UI
and ReDoc from their CDN with an inline script: they get a policy of their own that allows that CDN
and nothing else. References: MDN, "Content-Security-Policy"; OWASP Secure Headers Project.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'self'; script-src 'self' 'unsafe-inline' {DOCS_CDN}; style-src 'self' 'unsafe-inline' {DOCS_CDN}; "
    f"img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")

COMMON: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    # frame-ancestors is the standard; X-Frame-Options covers browsers that predate it.
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def policy_for(path: str) -> str:
    """The Content-Security-Policy for a request path."""
    return DOCS_POLICY if path.startswith(DOCS_PATHS) else PAGE_POLICY


class SecurityHeadersMiddleware:
    """Adds COMMON and the path's Content-Security-Policy to every HTTP response (errors included),
    without overriding a header a route set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["path"])

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {**COMMON, "Content-Security-Policy": policy}.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, add_headers)
