"""Fetcher fixtures, and a guard that fails any fetcher test that reaches beyond this machine.

The fetcher's safety tests name private, link-local and metadata addresses; they must be refused
before any packet leaves. An audit hook sees every socket connect and every name lookup in the
process: during a fetcher test, one aimed anywhere but loopback raises (and is recorded), so a
regression shows up as a failed test rather than as traffic.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.fetcher.settings import FetcherSettings
from tests.sources import Source, start_source

_outside: list[tuple[str, str]] = []
_armed = [False]


def _is_local(host: object) -> bool:
    if not isinstance(host, str | bytes):
        return True  # an fd or a unix path, not a network address
    text = host.decode() if isinstance(host, bytes) else host
    if text in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False  # a name: a lookup would ask DNS
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _armed[0]:
        return
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not _is_local(host):
            _outside.append(("connect", str(host)))
            raise PermissionError(f"a fetcher test tried to connect to {host}")
    elif event == "socket.getaddrinfo" and not _is_local(args[0]):
        _outside.append(("getaddrinfo", str(args[0])))
        raise PermissionError(f"a fetcher test tried to look up {args[0]!r}")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def nothing_leaves_the_machine() -> Iterator[list[tuple[str, str]]]:
    """Arms the audit hook for the test; fails it if anything tried to go out."""
    _outside.clear()
    _armed[0] = True
    try:
        yield _outside
    finally:
        _armed[0] = False
    assert not _outside, f"tried to reach beyond this machine: {_outside}"


def fetcher_settings(cache_dir: Path, **overrides: Any) -> FetcherSettings:
    """Settings for a fetcher that fetches from local sources, quickly, with its cache in `cache_dir`."""
    values: dict[str, Any] = {
        "allow_private_networks": "127.0.0.0/8",
        "cache_dir": cache_dir,
        "total_timeout": 3.0,
        "read_timeout": 2.0,
        "max_image_bytes": 2_000_000,
        "retry_backoff": 0.05,
        "queue_timeout": 3.0,
    }
    values.update(overrides)
    return FetcherSettings(**values)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    """The shared local source, stopping in 50 ms rather than 500 (dozens of tests start one)."""
    with start_source(tmp_path, poll_interval=0.05) as running:
        yield running
