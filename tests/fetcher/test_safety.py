"""The fetcher against hostile URLs: private and metadata addresses (directly, by DNS, by redirect),
bodies that are too large, not images, or decompression bombs. Nothing here may leave the machine:
the autouse guard in conftest.py fails a test whose fetcher so much as tries."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from services.common.images import ALLOWED_FORMATS
from services.fetcher.app import create_app
from services.fetcher.safety import (
    MAGIC_BYTES_NEEDED,
    AddressGuard,
    StaticResolver,
    looks_like_image,
    parse_networks,
)
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source, start_source


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    resolver = StaticResolver(
        {
            "photos.example.test": ["10.0.0.5"],
            "mapped.example.test": ["::ffff:10.0.0.5"],
            "mixed.example.test": ["127.0.0.1", "192.168.1.20"],
        }
    )
    with TestClient(create_app(fetcher_settings(tmp_path / "cache"), resolver=resolver)) as test_client:
        yield test_client


def _error(response) -> str:  # type: ignore[no-untyped-def]
    return response.json()["error"]["code"]


# -- which addresses may be reached (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "127.0.0.1",
        "0.0.0.0",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "224.0.0.251",  # multicast
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "::ffff:10.0.0.5",  # IPv4-mapped forms reach the IPv4 address
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",  # the same, written in hex
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
        "2002:a00:5::1",  # 6to4 of 10.0.0.5
        "::10.0.0.5",  # IPv4-compatible (deprecated)
    ],
)
def test_private_loopback_link_local_multicast_and_metadata_addresses_are_refused(address: str) -> None:
    assert AddressGuard().refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "52.216.1.1", "2606:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressGuard().refusal(address) is None


def test_the_allowlist_exempts_its_networks_but_never_metadata() -> None:
    guard = AddressGuard(parse_networks("127.0.0.0/8, 169.254.0.0/16, 10.1.0.0/16"))
    assert guard.refusal("127.0.0.1") is None
    assert guard.refusal("::ffff:127.0.0.1") is None
    assert guard.refusal("10.1.2.3") is None
    assert guard.refusal("10.2.0.1") is not None
    assert guard.refusal("169.254.169.254") == "a cloud metadata address"
    assert guard.refusal("::ffff:169.254.169.254") == "a cloud metadata address"


def test_a_bad_allowlist_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a network"):
        fetcher_settings(tmp_path, allow_private_networks="127.0.0.0/8, intranet")
    for bad in ("127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "[::1]:x", "intranet:8010"):
        with pytest.raises(ValueError, match="ADDRESS:PORT"):
            fetcher_settings(tmp_path, allow_private_networks=bad)


@given(
    allowed=st.integers(1, 65535),
    other=st.integers(1, 65535),
    host=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(1, 254)),
)
def test_an_address_and_port_exemption_covers_that_address_on_that_port_only(
    allowed: int, other: int, host: tuple[int, int, int]
) -> None:
    guard = AddressGuard(parse_networks(f"127.0.0.1:{allowed}, [::1]:{allowed}"))
    assert guard.refusal("127.0.0.1", allowed) is None and guard.refusal("::1", allowed) is None
    assert guard.refusal("::ffff:127.0.0.1", allowed) is None  # the same address, written in IPv6
    if other != allowed:
        assert guard.refusal("127.0.0.1", other) == "a loopback address"
        assert guard.refusal("::1", other) == "a loopback address"
    elsewhere = "127.{}.{}.{}".format(*host)
    if elsewhere != "127.0.0.1":
        assert guard.refusal(elsewhere, allowed) == "a loopback address"
    assert guard.refusal("127.0.0.1") == "a loopback address"  # a port not known: not exempt


def test_an_address_and_port_exemption_lets_the_fetcher_reach_that_source_only(
    tmp_path: Path, make_image: ImageFactory
) -> None:
    # As the offline demo runs: one image source on loopback, exempt by its address and port.
    with start_source(tmp_path / "a") as allowed, start_source(tmp_path / "b") as other:
        port = httpx.URL(allowed.base_url).port
        settings = fetcher_settings(tmp_path / "cache", allow_private_networks=f"127.0.0.1:{port}")
        with TestClient(create_app(settings)) as client:
            good = client.get("/v1/image", params={"url": allowed.add("/a.jpg", Route(body=make_image()))})
            wrong_port = client.get("/v1/image", params={"url": other.add("/b.jpg", Route(body=make_image()))})
            wrong_host = client.get("/v1/image", params={"url": f"http://127.0.0.2:{port}/a.jpg"})
    assert good.status_code == 200
    assert wrong_port.status_code == 403 and _error(wrong_port) == "blocked"
    assert wrong_host.status_code == 403 and _error(wrong_host) == "blocked"
    assert other.requests == []


def test_magic_bytes_recognise_the_decoded_formats_only(make_image: ImageFactory) -> None:
    for fmt in ALLOWED_FORMATS:  # AVIF and HEIC included
        assert looks_like_image(make_image(16, 16, fmt=fmt)[:MAGIC_BYTES_NEEDED]), fmt
    assert not looks_like_image(make_image(16, 16, fmt="TGA")[:MAGIC_BYTES_NEEDED])
    assert not looks_like_image(b"<!doctype html><html>")
    assert not looks_like_image(b'<svg xmlns="http://www.w3.org/2000/svg"/>')
    assert not looks_like_image(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    assert not looks_like_image(b"")


# -- through the app -------------------------------------------------------------------------------


def test_a_host_that_resolves_to_a_private_address_is_blocked_before_connecting(
    client: TestClient, nothing_leaves_the_machine: list[tuple[str, str]]
) -> None:
    response = client.get("/v1/image", params={"url": "http://photos.example.test/photos/1/original.jpg"})
    assert response.status_code == 403 and _error(response) == "blocked"
    assert "10.0.0.5" in response.json()["error"]["message"]
    assert nothing_leaves_the_machine == []  # no connect to 10.0.0.5 was even attempted


def test_an_ipv4_mapped_answer_is_judged_as_the_ipv4_address(client: TestClient) -> None:
    response = client.get("/v1/image", params={"url": "http://mapped.example.test/a.jpg"})
    assert response.status_code == 403 and _error(response) == "blocked"


def test_a_host_with_any_private_answer_is_refused_whole(client: TestClient) -> None:
    response = client.get("/v1/image", params={"url": "http://mixed.example.test/a.jpg"})
    assert response.status_code == 403 and _error(response) == "blocked"


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/", "http://[fd00:ec2::254]/"]
)
def test_metadata_addresses_are_blocked_even_by_address(client: TestClient, url: str) -> None:
    response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 403 and _error(response) == "blocked"


def test_a_redirect_to_the_metadata_service_is_refused_before_connecting(client: TestClient, source: Source) -> None:
    url = source.add(
        "/photo.jpg", Route(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/iam/"})
    )
    response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 403 and _error(response) == "blocked"
    assert [path for path, _ in source.requests] == ["/photo.jpg"]


def test_a_redirect_to_loopback_is_refused_when_loopback_is_not_allowed(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    # The collection's source is at 127.0.0.2 (allowed); it redirects to 127.0.0.1 (not allowed),
    # where a server is listening: it must never hear from the fetcher.
    inside = source.add("/secret.jpg", Route(body=make_image()))
    settings = fetcher_settings(tmp_path / "cache", allow_private_networks="127.0.0.2/32")
    origin_source = start_source(tmp_path, host="127.0.0.2", poll_interval=0.05)
    with origin_source as origin, TestClient(create_app(settings)) as client:
        url = origin.add("/photo.jpg", Route(status=301, headers={"Location": inside}))
        response = client.get("/v1/image", params={"url": url})
        direct = client.get("/v1/image", params={"url": inside})
    assert response.status_code == 403 and _error(response) == "blocked"
    assert direct.status_code == 403 and _error(direct) == "blocked"
    assert [path for path, _ in origin.requests] == ["/photo.jpg"]
    assert source.requests == []


def test_a_redirect_to_another_scheme_is_blocked(client: TestClient, source: Source) -> None:
    url = source.add("/photo.jpg", Route(status=302, headers={"Location": "file:///etc/passwd"}))
    response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 403 and _error(response) == "blocked"


def test_redirects_are_followed_a_few_times_only(client: TestClient, source: Source, make_image: ImageFactory) -> None:
    final = source.add("/final.jpg", Route(body=make_image()))
    source.add("/3", Route(status=307, headers={"Location": final}))
    hop2 = source.add("/2", Route(status=302, headers={"Location": "/3"}))  # relative, resolved against the hop
    hop1 = source.add("/1", Route(status=301, headers={"Location": hop2}))
    assert client.get("/v1/image", params={"url": hop2}).status_code == 200  # two redirects: fine
    assert [path for path, _ in source.requests] == ["/2", "/3", "/final.jpg"]
    source.requests.clear()
    too_many = source.add("/0", Route(status=301, headers={"Location": hop1}))
    response = client.get("/v1/image", params={"url": too_many})  # four: over the limit of three
    assert response.status_code == 502 and _error(response) == "error"
    assert "redirects" in response.json()["error"]["message"]
    assert [path for path, _ in source.requests] == ["/0", "/1", "/2", "/3"]


def test_a_20_mb_body_is_refused_by_its_declared_length_without_reading_it(tmp_path: Path, source: Source) -> None:
    body = b"\xff\xd8\xff" + bytes(20_000_000)
    url = source.add("/huge.jpg", Route(body=body))
    with TestClient(create_app(fetcher_settings(tmp_path / "cache", max_image_bytes=20_000_000))) as client:
        response = client.get("/v1/image", params={"url": url})
        stats = client.get("/v1/stats").json()
    assert response.status_code == 502 and _error(response) == "too_large"
    assert stats["domains"][0]["bytes"] == 0


def test_an_undeclared_20_mb_body_stops_being_read_past_the_limit(tmp_path: Path, source: Source) -> None:
    body = b"\xff\xd8\xff" + bytes(20_000_000)
    url = source.add("/huge.jpg", Route(body=body, declare_length=False))
    with TestClient(create_app(fetcher_settings(tmp_path / "cache", max_image_bytes=1_000_000))) as client:
        response = client.get("/v1/image", params={"url": url})
        stats = client.get("/v1/stats").json()
    assert response.status_code == 502 and _error(response) == "too_large"
    assert 1_000_000 < stats["domains"][0]["bytes"] <= 1_000_000 + 65_536  # one chunk past the cap, no more


def test_html_is_not_an_image_even_when_labelled_as_one(client: TestClient, source: Source) -> None:
    html = b"<!doctype html><html><body>Sign in to view this photo</body></html>"
    labelled_html = source.add("/a", Route(body=html, content_type="text/html; charset=utf-8"))
    mislabelled = source.add("/b.jpg", Route(body=html, content_type="image/jpeg"))
    for url in (labelled_html, mislabelled):
        response = client.get("/v1/image", params={"url": url})
        assert response.status_code == 502 and _error(response) == "not_an_image", url


def test_a_decompression_bomb_is_refused_before_it_is_decoded(client: TestClient, source: Source) -> None:
    # 100 megapixels in a few kilobytes: over Pillow's pixel limit (89,478,485) that the fetcher applies.
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, format="PNG", optimize=True)
    assert len(out.getvalue()) < 100_000
    url = source.add("/bomb.png", Route(body=out.getvalue(), content_type="image/png"))
    response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 502 and _error(response) == "too_large"
    assert "pixels" in response.json()["error"]["message"]
