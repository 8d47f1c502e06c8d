"""The page in Chromium under its hardening headers (Content-Security-Policy and the rest), served
through the real reverse proxy: photo and name searches, thumbnails, the detail dialog, and not one
Content-Security-Policy violation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, expect

from stack.proxy import ProxyProcess, nginx_available, proxy
from tests.browser.pages import card_ids, decoded_thumbnails, hit_ids, photo, published, search_by, wait_for_thumbnails
from tests.stack import Stack, _free_ports

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
# Reported to the page as `securitypolicyviolation` events, collected before any script of ours runs.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", e =>
    window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`));
"""


@pytest.fixture(scope="module")
def front(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    if not nginx_available():
        pytest.skip("nginx is missing: install Debian's nginx package (scripts/install.sh does)")
    (port,) = _free_ports(1)
    process = proxy(
        tmp_path_factory.mktemp("proxy"), port=port, upstream=f"127.0.0.1:{stack.gateway.port}", log_dir=stack.logs
    )
    process.start()
    try:
        process.wait_ready(timeout=30)
        yield process
    finally:
        process.stop()


@pytest.fixture
def guarded(browser: Browser, front: ProxyProcess) -> Iterator[tuple[Page, list[str]]]:
    """A page on the proxy, and every CSP complaint met (console, events, script errors)."""
    context = browser.new_context(base_url=front.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    context.add_init_script(RECORD_VIOLATIONS)
    complaints: list[str] = []

    def refuse(route: Route, request: Request) -> None:
        complaints.append(f"left the proxy's origin: {request.url}")
        route.abort()

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or message.type == "error":
            complaints.append(message.text)

    context.route(lambda url: not url.startswith(front.url), refuse)
    page = context.new_page()
    page.on("console", console)
    page.on("pageerror", lambda error: complaints.append(str(error)))
    try:
        yield page, complaints
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(ARTIFACTS / "hardening_behind_the_proxy.png"), full_page=True)
        finally:
            context.close()


def test_the_page_works_under_its_content_security_policy_behind_the_proxy(
    guarded: tuple[Page, list[str]], stack: Stack
) -> None:
    page, complaints = guarded
    loaded = page.goto("/")
    assert loaded is not None
    assert "frame-ancestors 'none'" in loaded.headers["content-security-policy"]
    assert loaded.headers["x-content-type-options"] == "nosniff"

    # A photo: its preview (an object URL), the hits and their thumbnails.
    record = published(stack)
    result = search_by(page, lambda: page.set_input_files("#file-input", str(photo(stack, record)))).json()
    assert card_ids(page) == hit_ids(result) and card_ids(page)[0] == record
    page.wait_for_function("() => { const i = document.querySelector('#preview img, img#preview'); "
                           "return i && i.complete && i.naturalWidth > 0 }")  # fmt: skip
    wait_for_thumbnails(page, 8)
    assert len(decoded_thumbnails(page)) >= 6

    # The detail dialog, with its larger image.
    page.locator("#results .hit").first.click()
    expect(page.locator("#detail")).to_be_visible()
    page.wait_for_function("() => { const i = document.querySelector('#detail img'); return i && i.naturalWidth > 0 }")
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()

    # A name.
    page.fill("#text-input", "Danaus plexippus")
    named = search_by(page, lambda: page.press("#text-input", "Enter")).json()
    assert named["query"] == "text" and card_ids(page) == hit_ids(named)

    violations = page.evaluate("() => window.__violations")
    assert violations == [] and complaints == [], (violations, complaints)
