"""Request body size limit, enforced while the body streams in rather than after it is buffered."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.http_errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit: an HTTPException, so body parsing
    (FastAPI's, Starlette's multipart parser) lets it through to the error handlers as 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _message(max_bytes), headers={"Connection": "close"})


def _message(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes / 1_000_000:g} MB"


class BodySizeLimitMiddleware:
    """Answers 413 as soon as a body passes `max_bytes`; the app never sees more than that.

    A declared `Content-Length` over the limit is refused before any of the body is read. Otherwise
    the body streams through to the app unbuffered (multipart parsing spools files to disk), and the
    chunk that crosses the line raises `BodyTooLarge` where the app reads it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "too_large", _message(self.max_bytes), headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
