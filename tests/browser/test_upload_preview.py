"""The preview of an uploaded photo is shown even when the browser cannot decode the photo (HEIC in Chromium):
the page then asks the gateway for a JPEG of it. In a module of its own, with its own stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from services.common.images import ALLOWED_FORMATS
from tests.browser.pages import PageSession, card_ids, photo, published, upload
from tests.stack import Stack

pytestmark = pytest.mark.e2e

DECODED = "() => { const i = document.getElementById('preview'); return i.complete && i.naturalWidth > 0 }"


def _previews_asked(session: PageSession) -> int:
    return sum(url.endswith("/api/preview") for url in session.requests)


def test_a_heic_upload_gets_a_visible_decoded_preview(page_session: PageSession, stack: Stack, tmp_path: Path) -> None:
    assert "HEIF" in ALLOWED_FORMATS
    record = published(stack)
    heic = tmp_path / "iphone.heic"
    Image.open(photo(stack, record)).convert("RGB").save(heic, format="HEIF", quality=90)
    page = page_session.page
    with page.expect_response(lambda r: r.url.endswith("/api/preview")) as answer:
        upload(page, heic)
    assert answer.value.status == 200 and answer.value.headers["content-type"] == "image/jpeg"
    assert card_ids(page)[0] == record  # the search itself read the HEIC
    page.wait_for_function(DECODED)
    expect(page.locator("#preview")).to_be_visible()
    assert page.locator("#preview").evaluate("img => img.naturalWidth") > 0
    assert _previews_asked(page_session) == 1


def test_a_photo_the_browser_shows_itself_is_not_sent_for_a_preview(page_session: PageSession, stack: Stack) -> None:
    upload(page_session.page, photo(stack, published(stack)))
    page_session.page.wait_for_function(DECODED)
    expect(page_session.page.locator("#preview")).to_be_visible()
    assert _previews_asked(page_session) == 0
