"""The fetcher's httpx client: it connects only to an address that `AddressGuard` has just checked.

httpx resolves a host inside its connection pool, so a check made beforehand could be undone by
a second lookup (DNS rebinding). Here the pool's network backend resolves the host once, checks
every answer, and opens the socket to the checked address; TLS still verifies, and sends SNI for,
the host name in the URL, because httpcore passes that name to start_tls itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager

import anyio
import httpcore
import httpx

from services.fetcher.safety import AddressGuard
from services.fetcher.settings import FetcherSettings

logger = logging.getLogger(__name__)

# httpcore's failures as httpx's, most specific first (what httpx's own transport does).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve and check in one place, then connect to one of the checked addresses."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self.guard.resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                # An address literal: anyio's own getaddrinfo parses it and asks no DNS server.
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the fetcher does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self.stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self.stream, "aclose", None)
        if close is not None:
            with _as_httpx_errors():
                await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's transport, over an httpcore pool whose every connection goes through the guard."""

    def __init__(self, guard: AddressGuard, *, max_connections: int) -> None:
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=GuardedBackend(guard),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self.pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseBody(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.pool.aclose()


def make_source_client(settings: FetcherSettings, guard: AddressGuard) -> httpx.AsyncClient:
    """The one client for every source: explicit timeouts and limits, our User-Agent, no redirects
    followed by httpx (the fetcher re-checks each one) and no proxies from the environment (a proxy
    would do the connecting, out of the guard's sight)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(guard, max_connections=settings.max_connections),
        timeout=httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            # Waiting for a pooled connection is bounded by the fetch's own deadline.
            pool=settings.total_timeout,
        ),
        headers={
            "User-Agent": settings.user_agent,
            # Images are compressed already; an encoded body would also dodge the size cap as it inflates.
            "Accept-Encoding": "identity",
            "Accept": "image/webp,image/jpeg,image/png,image/*;q=0.8",
        },
        follow_redirects=False,
        trust_env=False,
    )
