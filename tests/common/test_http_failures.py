"""The httpx client's failures as domain errors, against real sockets on 127.0.0.1: a connection the
server closes before answering is sent once more, a service that is gone is 503 naming it, and no
message is ever empty."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from services.common.errors import DependencyTimeout, DependencyUnavailable, DomainError
from services.common.http import (
    CLIENT_KEEP_ALIVE_SECONDS,
    SERVER_KEEP_ALIVE_SECONDS,
    make_async_client,
    send_idempotent,
    upstream,
)

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def _serve(behaviour: Callable[[int], bytes | None], port: int) -> asyncio.Server:
    """A raw HTTP server: for the n-th request, `behaviour(n)` is the answer, or None to close unanswered."""
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                seen += 1
                answer = behaviour(seen)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed its end
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


def _client() -> httpx.AsyncClient:
    return make_async_client(connect=1.0, read=1.0, max_connections=4, user_agent="test")


async def _call(client: httpx.AsyncClient, url: str, calls: list[int]) -> httpx.Response:
    async def send() -> httpx.Response:
        calls.append(1)
        return await client.post(url, json={"vectors": [[1.0]]})

    with upstream("search"):
        return await send_idempotent(send)


def test_the_clients_drop_idle_connections_before_the_servers_close_them() -> None:
    assert 0 < CLIENT_KEEP_ALIVE_SECONDS < SERVER_KEEP_ALIVE_SECONDS
    client = _client()
    assert client._transport._pool._keepalive_expiry == CLIENT_KEEP_ALIVE_SECONDS  # type: ignore[attr-defined]


def test_a_call_on_a_connection_the_server_closed_is_sent_once_more(free_port: Callable[[], int]) -> None:
    port = free_port()

    async def scenario() -> tuple[int, int]:
        server = await _serve(lambda n: None if n == 1 else OK, port)
        calls: list[int] = []
        async with server, _client() as client:
            response = await _call(client, f"http://127.0.0.1:{port}/v1/search", calls)
        return response.status_code, len(calls)

    assert asyncio.run(scenario()) == (200, 2)


def test_a_service_that_keeps_closing_is_unavailable_named_with_what_happened(free_port: Callable[[], int]) -> None:
    port = free_port()

    async def scenario() -> tuple[DomainError, int]:
        server = await _serve(lambda n: None, port)
        calls: list[int] = []
        async with server, _client() as client:
            with pytest.raises(DependencyUnavailable) as caught:
                await _call(client, f"http://127.0.0.1:{port}/v1/search", calls)
        return caught.value, len(calls)

    error, calls = asyncio.run(scenario())
    assert calls == 2  # once more, never more
    assert error.code == "search_unavailable"
    assert "search service closed the connection" in error.message and "RemoteProtocolError" in error.message


def test_a_service_that_is_gone_is_unavailable_with_a_message(free_port: Callable[[], int]) -> None:
    port = free_port()

    async def scenario() -> DomainError:
        async with _client() as client:
            with pytest.raises(DependencyUnavailable) as caught:
                await _call(client, f"http://127.0.0.1:{port}/v1/search", [])
        return caught.value

    error = asyncio.run(scenario())
    assert error.code == "search_unavailable"
    assert "refused the connection" in error.message and "ConnectError" in error.message


def test_a_silent_service_is_a_timeout_with_a_message_and_is_not_sent_again(free_port: Callable[[], int]) -> None:
    port = free_port()

    async def scenario() -> tuple[DomainError, int]:
        closed = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client gives up and closes
            writer.close()
            closed.set()

        server = await asyncio.start_server(silent, "127.0.0.1", port)
        calls: list[int] = []
        async with server:
            client = make_async_client(connect=1.0, read=0.3, max_connections=4, user_agent="test")
            async with client:
                with pytest.raises(DependencyTimeout) as caught:
                    await _call(client, f"http://127.0.0.1:{port}/v1/search", calls)
            await asyncio.wait_for(closed.wait(), 5)
        return caught.value, len(calls)

    error, calls = asyncio.run(scenario())
    assert calls == 1
    assert error.code == "search_timeout"
    assert "did not answer in time" in error.message and "ReadTimeout" in error.message


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadError(""), httpx.WriteError(""), httpx.RemoteProtocolError(""), httpx.ConnectError("")],
    ids=lambda exc: type(exc).__name__,
)
def test_a_dropped_connection_is_503_unavailable_and_the_message_names_it(exc: httpx.HTTPError) -> None:
    with pytest.raises(DependencyUnavailable) as caught, upstream("embedder"):
        raise exc
    assert caught.value.code == "embedder_unavailable"
    assert type(exc).__name__ in caught.value.message and "embedder" in caught.value.message
