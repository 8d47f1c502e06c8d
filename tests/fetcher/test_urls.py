"""Source URLs are parsed and normalised once, the WHATWG way, before any policy check: odd but valid
forms are fetched as browsers would read them (and refused when they name a refused address), what
cannot be parsed is `400 bad_url` (in a batch: that URL's status word alone), and no text at all
turns into a 500 or a connection to an address the fetcher may not reach."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import ada_url
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.common.schemas.fetcher import StatusWord
from services.fetcher.app import create_app
from services.fetcher.urls import parse_source_url
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source, start_source

STATUS_WORDS = set(StatusWord.__args__)  # type: ignore[attr-defined]


def _code(response) -> str:  # type: ignore[no-untyped-def]
    return response.json()["error"]["code"]


@pytest.fixture
def photo(source: Source, make_image: ImageFactory) -> str:
    return source.add("/photo.jpg", Route(body=make_image()))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"))) as test_client:
        yield test_client


def _port(url: str) -> int:
    port = parse_source_url(url).port
    assert port is not None
    return port


# -- the WHATWG reading -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("http://0177.0.0.1/a.jpg", "http://127.0.0.1/a.jpg"),  # octal
        ("http://127.000.000.001/a.jpg", "http://127.0.0.1/a.jpg"),  # zero-padded
        ("http://0x7f.1/a.jpg", "http://127.0.0.1/a.jpg"),  # hex, two parts
        ("http://2130706433/a.jpg", "http://127.0.0.1/a.jpg"),  # one number
        ("http://１２７.０.０.１/a.jpg", "http://127.0.0.1/a.jpg"),  # full-width digits and dots
        ("http://①②⑦.0.0.1/a.jpg", "http://127.0.0.1/a.jpg"),  # enclosed digits
        ("  http://Photos.Example.ORG/a.jpg\n", "http://photos.example.org/a.jpg"),  # whitespace, case
        ("http://photos.example.org/x/../a.jpg#top", "http://photos.example.org/a.jpg"),  # dot segments, fragment
        ("http:\\\\photos.example.org\\a.jpg", "http://photos.example.org/a.jpg"),  # backslashes
        ("https://photos.example.org:443/a b.jpg", "https://photos.example.org/a%20b.jpg"),
        ("http://faß.example/a.jpg", "http://xn--fa-hia.example/a.jpg"),  # IDNA (UTS 46, non-transitional)
    ],
)
def test_a_url_is_normalised_as_browsers_read_it(written: str, normalised: str) -> None:
    assert parse_source_url(written).href == normalised


@pytest.mark.parametrize(
    "url",
    [
        "http://exa mple.org/a.jpg",  # a space in the host
        "http://[zz]/a.jpg",  # not an IPv6 address
        "http://photos.example.org:99999/a.jpg",  # port out of range
        "http://a..b/a.jpg",  # an empty DNS label
        f"http://{'a' * 64}.org/a.jpg",  # a label over 63 characters
        "http://xn--ls8h-/a.jpg",  # not valid punycode
        "http://",
        "photos.example.org/a.jpg",  # no scheme
        "javascript:alert(1)",
        "http://1.2.3.4.5/",  # looks numeric, is not an IPv4 address
    ],
)
def test_what_cannot_be_parsed_is_a_bad_url(client: TestClient, url: str) -> None:
    response = client.get("/v1/image", params={"url": url.ljust(8)})
    assert response.status_code == 400 and _code(response) == "bad_url", response.text


@pytest.mark.parametrize(
    "host", ["0177.0.0.1", "127.000.000.001", "0x7f.0.0.1", "2130706433", "１２７.０.０.１", "①②⑦.0.0.1"]
)
def test_odd_forms_of_a_loopback_address_are_that_address(tmp_path: Path, photo: str, host: str) -> None:
    url = f"http://{host}:{_port(photo)}/photo.jpg"
    with TestClient(create_app(fetcher_settings(tmp_path / "open"))) as client:  # loopback allowed: fetched
        assert client.get("/v1/image", params={"url": url}).status_code == 200
    with TestClient(create_app(fetcher_settings(tmp_path / "shut", allow_private_networks=""))) as client:
        response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 403 and _code(response) == "blocked"
    assert "127.0.0.1" in response.json()["error"]["message"]


def test_surrounding_whitespace_is_stripped_and_the_url_shares_its_cache_entry(client: TestClient, photo: str) -> None:
    first = client.get("/v1/image", params={"url": photo})
    padded = client.get("/v1/image", params={"url": f"  {photo}\n"})
    assert first.status_code == 200 and padded.status_code == 200
    assert padded.headers["x-fetcher-cache"] == "memory"


def test_a_bad_url_in_a_batch_is_that_url_s_status_and_the_others_proceed(client: TestClient, photo: str) -> None:
    urls = ["http://exa mple.org/a.jpg", photo, "http://0177.0.0.1:1:2/"]
    response = client.post("/v1/images", json={"urls": urls})
    assert response.status_code == 200
    assert [item["status"] for item in response.json()["results"]] == ["bad_url", "ok", "bad_url"]


def test_a_redirect_with_backslashes_is_followed_as_a_browser_would(
    client: TestClient, source: Source, photo: str
) -> None:
    url = source.add("/moved.jpg", Route(status=302, headers={"Location": "\\photo.jpg"}))
    assert client.get("/v1/image", params={"url": url}).status_code == 200
    assert [path for path, _ in source.requests] == ["/moved.jpg", "/photo.jpg"]


def test_a_redirect_to_an_unparseable_location_fails_that_url_only(
    client: TestClient, source: Source, photo: str
) -> None:
    broken = source.add("/broken.jpg", Route(status=301, headers={"Location": "http://exa mple.org/a.jpg"}))
    single = client.get("/v1/image", params={"url": broken})
    assert single.status_code == 502 and _code(single) == "error"
    assert "redirected" in single.json()["error"]["message"]
    batch = client.post("/v1/images", json={"urls": [broken, photo]}).json()
    assert [item["status"] for item in batch["results"]] == ["error", "ok"]


# -- any text at all ----------------------------------------------------------------------------------

_PARTS = st.sampled_from(
    [
        "http://", "https://", "HTTP://", "http:", "http:\\\\", "//", "ftp://", " ", "\n", "\t", "\\", "/", ":", "@",
        "#", "?", "%", "%00", "%2e", "[", "]", "::1", "0177.0.0.1", "127.000.000.001", "0x7f.1", "2130706433",
        "１２７.０.０.１", "①", "⑦", "ｘ", "xn--", "a..b", ".", "..", "169.254.169.254", "[::ffff:127.0.0.1]",
        "[fe80::1%25eth0]", "localhost", "canary.test", "127.0.0.2", "photo.jpg", ":0", ":65536", ":99999",
        "\u200b", "\ufeff", "ß", "\x00", "\x7f", "é",
    ]
)  # fmt: skip


def _public_literal(text: str) -> bool:
    """The URL names a public IP address: fetching it would be right, and would leave this machine."""
    try:
        parsed = ada_url.URL(text)
        address = ipaddress.ip_address(parsed.hostname.strip("[]"))
    except ValueError:
        return False
    return address.is_global


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A server on 127.0.0.1, which the fetcher below may not reach: it must never hear a request."""
    with start_source(tmp_path_factory.mktemp("canary"), poll_interval=0.05) as running:
        yield running


@pytest.fixture(scope="module")
def guarded_client(tmp_path_factory: pytest.TempPathFactory, canary: Source) -> Iterator[TestClient]:
    async def every_name_is_the_canary(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # DNS as an attacker would answer it

    settings = fetcher_settings(
        tmp_path_factory.mktemp("cache"), allow_private_networks="127.0.0.2/32", retries=0, total_timeout=1.0
    )
    with TestClient(create_app(settings, resolver=every_name_is_the_canary)) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=60), st.lists(_PARTS | st.text(max_size=4), max_size=10).map("".join)))
def test_no_text_as_a_url_is_a_5xx_from_us_or_reaches_a_refused_address(
    guarded_client: TestClient, canary: Source, text: str
) -> None:
    assume(not _public_literal(text) and not _public_literal(text.strip()))
    response = guarded_client.get("/v1/image", params={"url": text.ljust(8)})
    code = _code(response)
    assert code in STATUS_WORDS, response.text
    # 4xx for what the URL says; a 5xx only when a source was asked and failed (here: nothing listens
    # on the one address allowed, 127.0.0.2).
    assert response.status_code < 500 or (code in ("error", "timeout") and "127.0.0.2" in response.text), response.text
    assert canary.requests == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(urls=st.lists(st.lists(_PARTS, min_size=1, max_size=8).map("".join), min_size=1, max_size=8))
def test_a_batch_of_any_urls_is_answered_url_by_url(
    guarded_client: TestClient, canary: Source, urls: list[str]
) -> None:
    assume(not any(_public_literal(url) or _public_literal(url.strip()) for url in urls))
    response = guarded_client.post("/v1/images", json={"urls": urls})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["url"] for item in results] == urls
    assert all(item["status"] in STATUS_WORDS - {"ok"} for item in results)
    assert canary.requests == []
