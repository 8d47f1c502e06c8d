"""The httpx client every service makes once, and the one mapping of its failures to HTTP errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from services.common.errors import ServiceError, UpstreamError
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


@contextmanager
def upstream(service: str) -> Iterator[None]:
    """Map transport failures talking to `service`: timeout -> 504, refused -> 503, other -> 502."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamError(
            service, f"the {service} service did not answer in time", code=f"{service}_timeout", status_code=504
        ) from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
        raise UpstreamError(
            service, f"the {service} service is unavailable ({exc})", code=f"{service}_unavailable", status_code=503
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(service, f"the {service} service failed: {exc}", code=f"{service}_error") from exc


def raise_for_upstream(service: str, response: httpx.Response) -> None:
    """Pass a service's 4xx on to our caller as it is (their mistake); a 5xx becomes ours, naming it."""
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "error", response.text[:200] or response.reason_phrase
    if response.status_code < 500:
        headers = {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else None
        raise ServiceError(message, code=code, status_code=response.status_code, headers=headers)
    status = 503 if response.status_code == 503 else 504 if response.status_code == 504 else 502
    raise UpstreamError(
        service, f"the {service} service failed: {message}", code=f"{service}_{code}", status_code=status
    )
