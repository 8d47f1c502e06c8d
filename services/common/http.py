"""The httpx client every service makes once, and the one reading of its failures as domain errors."""

from __future__ import annotations

from collections.abc import Iterator
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
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
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


@contextmanager
def upstream(service: str) -> Iterator[None]:
    """Transport failures talking to `service` as domain errors: timeout, refused, other."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise DependencyTimeout(
            service, f"the {service} service did not answer in time", code=f"{service}_timeout"
        ) from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
        raise DependencyUnavailable(
            service, f"the {service} service is unavailable ({exc})", code=f"{service}_unavailable"
        ) from exc
    except httpx.HTTPError as exc:
        raise DependencyFailed(service, f"the {service} service failed: {exc}", code=f"{service}_error") from exc


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
    failure = {503: DependencyUnavailable, 504: DependencyTimeout}.get(response.status_code, DependencyFailed)
    raise failure(service, f"the {service} service failed: {message}", code=f"{service}_{code}")
