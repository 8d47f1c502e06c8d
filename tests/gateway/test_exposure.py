"""What the gateway shows the public: hardening headers on every answer, a health answer without
internal addresses, and client addresses taken from X-Forwarded-For only when a trusted proxy sent it."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.app import create_app
from gateway.public import HIDDEN, public_model, redact
from gateway.security_headers import PAGE_POLICY
from gateway.settings import GatewaySettings
from services.common.service import DOCS_POLICY


def _settings(free_port: Callable[[], int], **overrides: object) -> GatewaySettings:
    return GatewaySettings(
        embedder_url=f"http://127.0.0.1:{free_port()}",
        search_url=f"http://127.0.0.1:{free_port()}",
        fetcher_url=f"http://127.0.0.1:{free_port()}",
        **overrides,
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/api/health", 503),
        ("GET", "/api/records/1", 503),
        ("GET", "/api/nothing-here", 404),
        ("POST", "/api/search", 415),
        ("GET", "/openapi.json", 200),
    ],
)
def test_every_answer_carries_the_hardening_headers(
    free_port: Callable[[], int], method: str, path: str, status: int
) -> None:
    with TestClient(create_app(_settings(free_port))) as client:
        response = client.request(method, path, content=b"x" if method == "POST" else None)
    assert response.status_code == status
    assert response.headers["content-security-policy"] == PAGE_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


def test_page_policy_allows_only_the_gateways_own_origin() -> None:
    directives = dict(d.strip().split(" ", 1) for d in PAGE_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == directives["style-src"] == directives["connect-src"] == "'self'"
    assert directives["img-src"] == "'self' blob: data:"  # the upload preview, the empty favicon
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in PAGE_POLICY and "http" not in PAGE_POLICY


def test_api_docs_get_their_own_policy_for_their_inline_start_up_script(free_port: Callable[[], int]) -> None:
    with TestClient(create_app(_settings(free_port))) as client:
        pages = [client.get(path) for path in ("/docs", "/redoc", "/docs/oauth2-redirect")]
    for page in pages:
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == DOCS_POLICY
        assert page.headers["x-frame-options"] == "DENY"
    directives = dict(part.strip().split(" ", 1) for part in DOCS_POLICY.split(";"))
    assert directives["script-src"] == "'self' 'unsafe-inline'" and directives["frame-ancestors"] == "'none'"
    assert "http" not in DOCS_POLICY  # the files are the gateway's own: no CDN


def test_public_health_names_no_service_url_and_internal_health_does(free_port: Callable[[], int]) -> None:
    settings = _settings(free_port)
    with TestClient(create_app(settings)) as client:
        public = client.get("/api/health")
        internal = client.get("/internal/health")
    assert public.status_code == internal.status_code == 503
    assert all(not s["ready"] and s["reason"] for s in public.json()["services"].values())
    assert "url" not in public.text and "127.0.0.1" not in public.text
    assert internal.json()["services"]["search"]["url"] == settings.search_url


_addresses = st.one_of(
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 65535)).map(lambda t: f"[{t[0]}]:{t[1]}"),
    st.tuples(st.sampled_from(["http", "https"]), st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)).map(
        lambda t: f"{t[0]}://{t[1]}:8002/readyz"
    ),
    st.from_regex(r"(/[a-z0-9_.-]{1,8}){2,5}", fullmatch=True),
)
_words = st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=20)


@given(before=_words, address=_addresses, after=_words)
def test_redacted_reasons_keep_no_address_url_or_path(before: str, address: str, after: str) -> None:
    redacted = redact(f"{before} ({address}) {after}")
    assert redacted is not None and HIDDEN in redacted
    assert address not in redacted
    host = address.strip("[").split("]")[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    assert host not in redacted.replace(HIDDEN, "")


def test_redaction_keeps_a_reason_without_addresses() -> None:
    for reason in ("loading the model (3/5 files)", "status 503", "starting since 12:30:05"):
        assert redact(reason) == reason


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert GatewaySettings(trusted_proxies="10.0.0.5, 172.30.57.0/24, ::1").trusted_proxies
    with pytest.raises(ValidationError, match=r"proxy\.internal"):
        GatewaySettings(trusted_proxies="10.0.0.5,proxy.internal")


def _spoofing_client(settings: GatewaySettings, connecting: str) -> TestClient:
    return TestClient(create_app(settings), client=(connecting, 50000))


@pytest.mark.parametrize(
    ("trusted", "connecting", "expected_limited"),
    [
        ("", "198.51.100.7", True),  # no proxy trusted: the header is ignored
        ("10.0.0.5", "198.51.100.7", True),  # not from the proxy: ignored
        ("10.0.0.5", "10.0.0.5", False),  # from the proxy: each request is the address it appended
    ],
)
def test_forwarded_for_counts_only_from_a_trusted_proxy_and_only_its_own_entry(
    free_port: Callable[[], int], trusted: str, connecting: str, expected_limited: bool
) -> None:
    settings = _settings(free_port, trusted_proxies=trusted, images_per_minute=2)
    statuses = []
    with _spoofing_client(settings, connecting) as client:
        for n in range(4):
            # The client's own made-up entry first, then the address the proxy saw (a new one each time).
            forwarded = f"203.0.113.99, 192.0.2.{n + 1}"
            statuses.append(client.get("/api/images/1", headers={"X-Forwarded-For": forwarded}).status_code)
    assert (429 in statuses) is expected_limited, statuses
    assert statuses[:2] == [503, 503]  # search is down: the first two went through the limiter


def test_a_client_writing_its_own_entries_behind_a_trusted_proxy_is_still_limited(
    free_port: Callable[[], int],
) -> None:
    settings = _settings(free_port, trusted_proxies="10.0.0.5", images_per_minute=2)
    with _spoofing_client(settings, "10.0.0.5") as client:
        statuses = [
            # What an appending proxy sends for one client who writes a new address each time.
            client.get("/api/images/1", headers={"X-Forwarded-For": f"203.0.113.{n + 1}, 192.0.2.1"}).status_code
            for n in range(4)
        ]
    assert statuses == [503, 503, 429, 429]


@given(
    st.lists(st.text(alphabet="abc-_.", min_size=1, max_size=8), min_size=1, max_size=5), st.sampled_from(["pt", "bin"])
)
def test_public_model_keeps_only_the_checkpoints_file_name(parts: list[str], suffix: str) -> None:
    name = f"weights.{suffix}"
    path = "/" + "/".join([*parts, name])
    shown = public_model({"model": "hf-hub:org/model", "checkpoint": path, "dim": 8})
    assert shown == {"model": "hf-hub:org/model", "checkpoint": name, "dim": 8}
    assert public_model({"model": "hf-hub:org/model", "checkpoint": None}) == {
        "model": "hf-hub:org/model",
        "checkpoint": None,
    }
