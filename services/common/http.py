"""The httpx client every service makes once, and the one reading of its failures as domain errors.

Keep-alive: a server closes an idle connection after `SERVER_KEEP_ALIVE_SECONDS` (uvicorn's
`timeout_keep_alive`, set in services/common/serve.py); our clients drop an idle connection after
`CLIENT_KEEP_ALIVE_SECONDS`, which is lower, so a client does not pick a connection the server is
closing. A server that was stalled (SIGSTOP, a long GC pause) can still close connections that
had requests waiting on them; `send_idempotent` retries such a call once on a fresh connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx

from services.common.errors import (
    DependencyFailed,
    DependencyTimeout,
    DependencyUnavailable,
    DomainError,
    Expired,
    Forbidden,
    InvalidInput,
    InvalidValue,
    NotFound,
    RateLimited,
    TooLarge,
    UnsupportedMediaType,
)
from services.common.logging import REQUEST_ID_HEADER, current_request_id

logger = logging.getLogger(__name__)

# uvicorn's default keep-alive timeout is 5 s; it is set explicitly so the client's can stay below it.
SERVER_KEEP_ALIVE_SECONDS = 5.0
CLIENT_KEEP_ALIVE_SECONDS = 2.0

# A connection the server closed or reset before answering: nothing was processed, or the call is
# idempotent, so it can go again once. Timeouts are not here: the server may still be working.
CLOSED_CONNECTION: tuple[type[Exception], ...] = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def _forward_request_id(request: httpx.Request) -> None:
    request_id = current_request_id()
    if request_id != "-" and REQUEST_ID_HEADER not in request.headers:
        request.headers[REQUEST_ID_HEADER] = request_id


def make_async_client(
    *,
    connect: float,
    read: float,
    max_connections: int,
    user_agent: str,
    base_url: str = "",
    follow_redirects: bool = False,
    forward_request_id: bool = True,
) -> httpx.AsyncClient:
    """One client per service, made in its lifespan: pooled connections, explicit timeouts and limits."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(connect=connect, read=read, write=read, pool=connect),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=CLIENT_KEEP_ALIVE_SECONDS,
        ),
        headers={"User-Agent": user_agent},
        follow_redirects=follow_redirects,
        # Request ids go to our own services, never to the outside world.
        event_hooks={"request": [_forward_request_id] if forward_request_id else []},
    )


# A service's 4xx is the caller's mistake: passed on as the same kind, so it leaves with the same status.
_CALLER_ERRORS: dict[int, type[DomainError]] = {
    400: InvalidInput,
    403: Forbidden,
    404: NotFound,
    410: Expired,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: InvalidValue,
    429: RateLimited,
}


def describe(exc: BaseException) -> str:
    """An exception as words for a message: its class, and its text when it has one (httpx's is often empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_WHAT_HAPPENED: list[tuple[type[Exception], str]] = [
    (httpx.ConnectTimeout, "could not be connected to in time"),
    (httpx.PoolTimeout, "had no free connection in time"),
    (httpx.TimeoutException, "did not answer in time"),
    (httpx.ConnectError, "refused the connection"),
    (httpx.RemoteProtocolError, "closed the connection without answering"),
    (httpx.ReadError, "dropped the connection"),
    (httpx.WriteError, "dropped the connection"),
]


def upstream_error(service: str, exc: httpx.HTTPError) -> DomainError:
    """A transport failure talking to `service` as a domain error, naming it and what happened:
    a timeout is `DependencyTimeout` (504 `<service>_timeout`); a refused, closed or dropped
    connection is `DependencyUnavailable` (503 `<service>_unavailable`: the service is down or was
    killed mid-call); anything else is `DependencyFailed` (502 `<service>_error`)."""
    what = next((words for kind, words in _WHAT_HAPPENED if isinstance(exc, kind)), "failed")
    message = f"the {service} service {what} ({describe(exc)})"
    if isinstance(exc, httpx.TimeoutException):
        return DependencyTimeout(service, message, code=f"{service}_timeout")
    if isinstance(exc, (httpx.ConnectError, *CLOSED_CONNECTION)):
        return DependencyUnavailable(service, message, code=f"{service}_unavailable")
    return DependencyFailed(service, message, code=f"{service}_error")


@contextmanager
def upstream(service: str) -> Iterator[None]:
    """Transport failures talking to `service` raised as domain errors (`upstream_error`)."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise upstream_error(service, exc) from exc


async def send_idempotent(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """`send()`, and once more when the server closed or reset the connection before answering
    (`CLOSED_CONNECTION`): the pool then drops that connection, so the second try takes a fresh one,
    and a service that is really gone fails it with a connect error.

    Only for idempotent calls: GETs, and POSTs that compute without changing anything (the
    embedder's embed and classify, search's search). httpx's own transport retries cover connect
    errors only. A file in `files` is rewound by httpx when the body is sent again.
    """
    try:
        return await send()
    except CLOSED_CONNECTION as exc:
        logger.info("connection closed under a call (%s); sending it once more", describe(exc))
    return await send()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def raise_for_upstream(service: str, response: httpx.Response) -> None:
    """Pass a service's 4xx on to our caller as the same kind and code (their mistake); a 5xx becomes
    ours, naming the service: unavailable (503), timeout (504) or failed (other)."""
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "error", response.text[:200] or response.reason_phrase
    if response.status_code < 500:
        kind = _CALLER_ERRORS.get(response.status_code, InvalidInput)
        raise kind(message, code=code, retry_after=_retry_after(response))
    failure, what = {
        503: (DependencyUnavailable, "is unavailable"),
        504: (DependencyTimeout, "timed out"),
    }.get(response.status_code, (DependencyFailed, "failed"))
    raise failure(
        service,
        f"the {service} service {what}: {message}",
        code=f"{service}_{code}",
        retry_after=_retry_after(response),
    )
