"""The API docs (/docs, /redoc) load with nothing but the gateway reachable: no CDN, no web fonts."""

from __future__ import annotations

import pytest
from playwright.sync_api import Request, Route, expect

from tests.browser.pages import PageSession
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_swagger_ui_lists_the_operations_with_the_network_blocked(page_session: PageSession, stack: Stack) -> None:
    page = page_session.page
    page.goto("/docs")
    expect(page.locator(".opblock-summary-path", has_text="/api/search").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/records/{record_id}")).to_be_visible()
    assert page_session.blocked == []
    assert any("/docs-assets/swagger-ui-bundle.js" in url for url in page_session.requests)


def test_redoc_lists_the_operations_with_the_network_blocked(page_session: PageSession, stack: Stack) -> None:
    page = page_session.page
    page.goto("/redoc")
    expect(page.get_by_role("heading", name="Search the collection")).to_be_visible()
    assert page_session.blocked == []


@pytest.mark.parametrize("service", ["embedder", "search", "fetcher"])
def test_every_service_serves_its_docs_files_itself(page_session: PageSession, stack: Stack, service: str) -> None:
    url = getattr(stack, service).url
    page = page_session.page
    page.context.unroute_all()

    def refuse(route: Route, request: Request) -> None:
        page_session.blocked.append(request.url)
        route.abort()

    page.context.route(lambda u: not u.startswith(url), refuse)
    page.goto(url + "/docs")
    expect(page.locator(".opblock-summary-path", has_text="/healthz")).to_be_visible()
    assert page_session.blocked == []
