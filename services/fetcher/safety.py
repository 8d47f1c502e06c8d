"""What the fetcher may fetch: URL schemes, the addresses it may connect to, what counts as an image.

URLs themselves are parsed and normalised in urls.py before anything here sees them.
The fetcher fetches URLs that come from a collection, which anyone may have built: a URL (or a
redirect, or a DNS answer) must not turn it into a way to reach the machine it runs on, its
private network or a cloud metadata service. Every address a host resolves to is checked here,
and the transport connects only to an address this module accepted.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio

from services.common.images import claimed_format
from services.fetcher.errors import FetchFailed

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Answer a host name with its addresses (as text). Pluggable so tests and benchmarks can name
# hosts without DNS; the service uses the system resolver.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud instance-metadata endpoints: refused even when an allowlist covers their network.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)

# Enough of the start of a body to tell its format (Pillow reads as many to choose a decoder).
MAGIC_BYTES_NEEDED = 16

# Content types that may carry an image: S3 and some CDNs label everything octet-stream.
_IMAGE_LIKE_TYPES = ("application/octet-stream", "binary/octet-stream")


@dataclass(frozen=True)
class Exemption:
    """Addresses the fetcher may reach although private or loopback: a network, on every port or on one."""

    network: IPNetwork
    port: int | None = None  # None: every port

    def covers(self, address: IPAddress, port: int | None) -> bool:
        """Whether this exemption lets the fetcher reach `address` on `port` (None: a port not known)."""
        if address.version != self.network.version or address not in self.network:
            return False
        return self.port is None or self.port == port


def _exemption(item: str) -> Exemption:
    # ADDRESS:PORT or [IPv6]:PORT: one address on one port (the offline demo's image source).
    bracketed = item.startswith("[") and "]:" in item
    if bracketed or (item.count(":") == 1 and "/" not in item):
        host, _, port_text = item.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{item!r} names no port from 1 to 65535")
        address = ipaddress.ip_address(host.strip("[]") if bracketed else host)
        return Exemption(ipaddress.ip_network(address), int(port_text))
    return Exemption(ipaddress.ip_network(item, strict=False))


def parse_networks(text: str) -> tuple[Exemption, ...]:
    """Comma-separated CIDRs (a bare address is one host), each on every port, or `ADDRESS:PORT` /
    `[IPv6]:PORT` for one address on one port; ValueError names a bad one."""
    exemptions = []
    for item in text.split(","):
        item = item.strip()
        if item:
            try:
                exemptions.append(_exemption(item))
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network in CIDR notation or an ADDRESS:PORT ({exc})") from exc
    return tuple(exemptions)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to: mapped, 6to4, Teredo, NAT64 and IPv4-compatible forms."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    packed = int(address)
    if address in ipaddress.ip_network("64:ff9b::/96") or address in ipaddress.ip_network("64:ff9b:1::/48"):
        found.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d, the deprecated IPv4-compatible form
        found.append(ipaddress.IPv4Address(packed))
    return found


def _reason(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


class AddressGuard:
    """Decides whether the fetcher may connect to an address, and resolves hosts to allowed ones."""

    def __init__(self, allowed: Iterable[Exemption | IPNetwork] = (), resolver: Resolver | None = None) -> None:
        self.allowed = tuple(a if isinstance(a, Exemption) else Exemption(a) for a in allowed)
        self.resolver: Resolver = resolver or system_resolver

    def refusal(self, text: str, port: int | None = None) -> str | None:
        """Why the fetcher may not connect to this address (on `port`), or None when it may. Without a port,
        exemptions limited to one port do not apply."""
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        except ValueError:
            return "not an IP address"
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            # ::ffff:10.0.0.5 reaches 10.0.0.5: judge it as that address.
            if address.ipv4_mapped is not None:
                candidates = [address.ipv4_mapped]
            candidates += [a for a in _embedded_ipv4(address) if a not in candidates]
        for candidate in candidates:
            if candidate in METADATA_ADDRESSES:
                return "a cloud metadata address"
        for candidate in candidates:
            if any(exemption.covers(candidate, port) for exemption in self.allowed):
                continue
            reason = _reason(candidate)
            if reason:
                return reason if candidate == address else f"{reason} ({candidate}, inside {address})"
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`; blocked when any answer is one we may not reach.

        Any, not all: a host that answers both a public and a private address (DNS rebinding
        tricks do) is refused whole rather than raced.
        """
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal.split("%", 1)[0])
            addresses = [literal]
        except ValueError:
            addresses = await self.resolver(host, port)
        if not addresses:
            raise OSError(f"{host} has no addresses")
        for address in addresses:
            reason = self.refusal(address, port)
            if reason:
                logger.warning("refused to connect to %s port %d: %s is %s", host, port, address, reason)
                shown = host if host == address else f"{host} ({address})"
                raise FetchFailed("blocked", f"refused to connect to {shown}: {reason}")
        return addresses


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (DNS, /etc/hosts), IPv4 and IPv6, without duplicates."""
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class StaticResolver:
    """Host names answered from a table, nothing else (tests and benchmarks: no DNS at all)."""

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = {host.lower(): list(addresses) for host, addresses in table.items()}

    async def __call__(self, host: str, port: int) -> list[str]:
        try:
            return self.table[host.lower()]
        except KeyError:
            raise OSError(f"{host} is not in the resolver's table") from None


def content_type_refusal(content_type: str | None) -> str | None:
    """Why a declared Content-Type cannot be an image, or None (no type declared is let through)."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("image/") or media in _IMAGE_LIKE_TYPES:
        return None
    return f"the source sent {media}, not an image"


def looks_like_image(head: bytes) -> bool:
    """The first bytes are those of a format the shared decoder takes (services.common.images.ALLOWED_FORMATS,
    by the decoders' own signature tests), so that no other body is read to its end."""
    return claimed_format(head) is not None
