"""Playwright driving Debian's Chromium against the four services as processes (see tests/stack.py).

Each test module gets its own stack; each test gets a fresh browser context, whose last view is
kept as a screenshot under test-artifacts/browser/ (pass or fail)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, Route, sync_playwright

from stack.tiny_model import TinyModel
from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS, PageSession
from tests.stack import Stack, running_stack

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), tiny_model) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package (scripts/install.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so the browser tests may not be skipped", pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page_session(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[PageSession]:
    context = browser.new_context(
        base_url=stack.gateway.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    session = PageSession(page, context, stack.gateway.url)
    page.on("request", lambda r: session.requests.append(r.url))
    page.on("pageerror", lambda error: session.errors.append(str(error)))

    # Nothing may leave 127.0.0.1: anything not for the gateway is refused and remembered.
    def refuse(route: Route, req: Request) -> None:
        session.blocked.append(req.url)
        route.abort()

    context.route(lambda url: not url.startswith(stack.gateway.url), refuse)
    try:
        yield session
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        finally:
            context.close()
    assert not session.errors, f"the page threw: {session.errors}"


@pytest.fixture
def page(page_session: PageSession) -> Page:
    return page_session.page
