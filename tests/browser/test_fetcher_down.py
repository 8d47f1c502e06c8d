"""With the fetcher stopped, the page still searches and says which images can't be had.

In a module of its own: it stops its stack's fetcher."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pages import card_ids, hit_ids, photo, published, search_by, upload, wait_for_thumbnails
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_a_stopped_fetcher_gives_placeholders_and_a_page_that_still_searches(page: Page, stack: Stack) -> None:
    stack.fetcher.stop()
    record = published(stack)
    result = upload(page, photo(stack, record))
    assert card_ids(page)[0] == record
    wait_for_thumbnails(page, 12)
    cards = page.locator("#results .hit")
    expected = ["image unavailable" if hit["thumbnail_url"] else "no published image" for hit in result["hits"][:12]]
    assert "image unavailable" in expected
    shown = cards.locator(".placeholder").evaluate_all("spans => spans.slice(0, 12).map(s => s.textContent)")
    assert shown == expected
    expect(cards.first.locator(".placeholder")).to_have_attribute("role", "img")
    assert page.locator("#results .hit img").evaluate_all("imgs => imgs.filter(i => i.naturalWidth > 0).length") == 0
    expect(page.locator("#error")).to_be_hidden()
    # The detail panel says the same, and the page keeps searching.
    cards.first.click()
    expect(page.locator("#detail .detail-figure .placeholder")).to_have_text("image unavailable")
    page.keyboard.press("Escape")
    page.fill("#text-input", "English oak")
    again = search_by(page, lambda: page.press("#text-input", "Enter"))
    assert again.status == 200
    assert card_ids(page) == hit_ids(again.json())
    expect(page.locator("#query-label")).to_contain_text("English oak")
