"""Source URLs, parsed and normalised once, the way browsers do (the WHATWG URL Standard).

Every URL the fetcher is given, and every redirect `Location`, goes through `parse_source_url`
before any policy or safety check, so all later steps see one canonical form: surrounding
whitespace (and tabs or newlines inside) removed, the host lower-cased and IDNA-mapped
(full-width and enclosed digits become ASCII), IPv4 hosts in any form browsers accept (`0177.0.0.1`,
`127.000.000.001`, `0x7f.1`) written as dotted decimal, backslashes read as slashes, `..` segments
resolved, the default port and the fragment dropped. The parsing is ada's (a maintained
implementation of https://url.spec.whatwg.org/); what it refuses is the caller's `bad_url`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import ada_url
import httpx

from services.fetcher.errors import FetchFailed

logger = logging.getLogger(__name__)

SCHEMES = ("http", "https")
# RFC 1035 section 2.3.4: a DNS name is at most 253 characters written out, a label at most 63.
_MAX_NAME = 253
_MAX_LABEL = 63


class UnfetchableURL(FetchFailed):
    """bad_url, with why: `reason` is "unparseable", "scheme" (not http or https) or "host"."""

    def __init__(self, reason: Literal["unparseable", "scheme", "host"], message: str) -> None:
        super().__init__("bad_url", message)
        self.reason = reason


@dataclass(frozen=True)
class SourceURL:
    """A URL the fetcher may ask for. `href` is the normalised URL (no fragment); `host` is a
    lower-case ASCII domain, a dotted IPv4 address or a bracketed IPv6 address; `port` is None for
    the scheme's default."""

    href: str
    scheme: str
    host: str
    port: int | None


def parse_source_url(text: str, base: str | None = None) -> SourceURL:
    """`text` parsed against `base` (a redirect's Location against the URL that sent it).

    Raises UnfetchableURL (a FetchFailed, bad_url) for what the WHATWG parser refuses, a scheme other than http(s),
    a host that DNS cannot name (an empty label, a label over 63 characters, a name over 253), or
    one the HTTP client cannot request (a punycode label that is not valid IDNA 2008).
    """
    try:
        parsed = ada_url.URL(text, base) if base is not None else ada_url.URL(text)
    except ValueError:
        shown = text.strip()[:200]
        raise UnfetchableURL("unparseable", f"the URL cannot be parsed: {shown!r}") from None
    scheme = parsed.protocol.removesuffix(":")
    if scheme not in SCHEMES:
        raise UnfetchableURL("scheme", f"only http and https URLs can be fetched, not {scheme or 'no scheme'!r}")
    host = parsed.hostname
    if not host:
        raise UnfetchableURL("host", "the URL has no host")
    if parsed.host_type == ada_url.HostType.DEFAULT:  # a domain, not an address literal
        _check_dns_name(host)
    parsed.hash = ""  # never sent to a server; dropping it makes equal URLs equal
    href = parsed.href
    try:
        # The HTTP client checks punycode labels by IDNA 2008, stricter than the WHATWG's UTS 46
        # (an emoji domain passes one and not the other): what it cannot request is refused here.
        httpx.URL(href).host  # noqa: B018 - decodes the host, raising on what httpx refuses
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise UnfetchableURL("host", f"the host {host[:100]!r} cannot be requested: {exc}") from None
    port = int(parsed.port) if parsed.port else None
    return SourceURL(href=href, scheme=scheme, host=host, port=port)


def _check_dns_name(host: str) -> None:
    labels = host.removesuffix(".").split(".")
    if len(host.removesuffix(".")) > _MAX_NAME or any(not label or len(label) > _MAX_LABEL for label in labels):
        raise UnfetchableURL("host", f"the host {host[:100]!r} is not a name DNS can look up")
