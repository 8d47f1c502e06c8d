"""The page in Chromium against the four real services: photo, name and record searches, the detail
panel, re-runs that do not embed again, prediction and tree, export, permalinks, keyboard, phone width."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.pages import (
    PageSession,
    card_ids,
    decoded_thumbnails,
    hit_ids,
    image_embeddings,
    photo,
    published,
    search_by,
    settled,
    upload,
    wait_for_thumbnails,
)
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_uploading_a_photo_shows_hits_with_decoded_thumbnails(page: Page, stack: Stack) -> None:
    record = published(stack)
    result = upload(page, photo(stack, record))
    assert card_ids(page) == hit_ids(result) and len(result["hits"]) == 24
    assert card_ids(page)[0] == record
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#query-label")).to_contain_text("original.jpg")
    expect(page.locator("#status")).to_contain_text("24 hits")
    wait_for_thumbnails(page, 8)
    widths = decoded_thumbnails(page)
    assert len(widths) >= 6 and all(width > 0 for width in widths)
    assert page.locator("#results .hit").first.locator("img").evaluate("img => img.naturalWidth") > 0


def test_clicking_a_hit_opens_the_detail_with_taxonomy_and_links_and_escape_closes_it(page: Page, stack: Stack) -> None:
    record = published(stack)
    upload(page, photo(stack, record))
    row = stack.rows[record]
    page.locator("#results .hit").first.click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text(f"{row['genus']} {row['species']}")
    table = dialog.locator("table.taxonomy")
    for rank in ("kingdom", "phylum", "class", "order", "family", "genus", "species"):
        expect(table.locator("tr", has=page.locator(f"th:text-is('{rank}')")).locator("td")).to_have_text(row[rank])
    expect(dialog.locator(".source")).to_contain_text(row["publisher"])
    expect(dialog.locator("a", has_text="original image")).to_have_attribute("href", row["url"])
    expect(dialog.locator("#search-from")).to_be_visible()
    page.wait_for_function("() => { const i = document.querySelector('#detail img'); return i && i.naturalWidth > 0 }")
    expect(page.locator("#detail-close")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.locator("#results .hit").first).to_be_focused()


def test_changing_the_scope_shows_new_hits_without_embedding_the_photo_again(page: Page, stack: Stack) -> None:
    first = upload(page, photo(stack, 1))
    before = image_embeddings(stack)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/api/search") else None)
    again = search_by(page, lambda: page.select_option("#scope", "url_only")).json()
    assert again["parameters"]["scope"] == "url_only" and again["query_id"] == first["query_id"]
    assert json.loads(sent[-1])["query_id"] == first["query_id"]  # the id went, not the photo
    assert card_ids(page) == hit_ids(again)
    assert all(hit["image_url"] for hit in again["hits"])
    expect(page.locator("#results .placeholder", has_text="no published image")).to_have_count(0)
    # More parameters, still without the photo: top_n, the prediction rank.
    page.fill("#top-n", "6")
    sixth = search_by(page, lambda: page.press("#top-n", "Enter")).json()
    assert len(card_ids(page)) == 6 and sixth["parameters"]["top_n"] == 6
    ranked = search_by(page, lambda: page.select_option("#rank", "family")).json()
    assert ranked["parameters"]["rank"] == "family"
    assert image_embeddings(stack) == before
    assert "scope=url_only" in page.url and "rank=family" in page.url


def test_a_field_losing_focus_after_the_search_does_not_search_again(page: Page, stack: Stack) -> None:
    """A number typed before choosing the photo fires "change" only when the field loses focus,
    after the search already used it: that must not redraw the results a second time."""
    page.goto("/")
    page.fill("#top-n", "5")
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if r.url.split("?")[0].endswith("/api/search") else None)
    search_by(page, lambda: page.set_input_files("#file-input", str(photo(stack, 2))))
    assert len(card_ids(page)) == 5
    page.locator("#top-n").blur()  # fires "change" with the value the search was made with
    page.locator("#results").click(position={"x": 1, "y": 1})
    page.wait_for_timeout(300)
    assert len(searches) == 1, searches
    # A value that did change still searches again.
    page.fill("#top-n", "4")
    search_by(page, lambda: page.locator("#top-n").blur())
    assert len(card_ids(page)) == 4 and len(searches) == 2


def test_several_photos_of_one_organism_are_searched_together(page: Page, stack: Stack) -> None:
    result = upload(page, photo(stack, 0), photo(stack, 12))  # rows i and i+12: the same species
    assert result["query"] == "image" and len(result["label"].split(", ")) == 2
    assert {0, 12} <= set(card_ids(page)[:6])
    expect(page.locator("#preview-more img")).to_have_count(1)
    expect(page.locator("#preview-label")).to_contain_text("2 photos")


def test_dropping_or_pasting_a_photo_searches_it(page: Page, stack: Stack) -> None:
    page.goto("/")
    give = """([selector, kind, name, data]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        const event = kind === "drop"
            ? new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true})
            : new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true});
        document.querySelector(selector).dispatchEvent(event);
    }"""
    for kind, selector, index in (("drop", "#drop-zone", 9), ("paste", "body", 10)):
        data = base64.b64encode(photo(stack, index).read_bytes()).decode()
        response = search_by(page, lambda: page.evaluate(give, [selector, kind, f"{kind}.jpg", data]))  # noqa: B023
        assert response.status == 200, response.text()
        assert response.json()["label"] == f"{kind}.jpg" and card_ids(page)[0] == index
        expect(page.locator("#preview-label")).to_have_text(f"{kind}.jpg")


def test_a_forgotten_photo_is_uploaded_again_when_the_parameters_change(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 11))
    sent: list[str] = []

    # The gateway keeps recent queries only; make it answer as if it had forgotten this one.
    def forget(route: Route) -> None:
        body = route.request.post_data or ""
        sent.append("json" if body.startswith("{") else "upload")
        if body.startswith("{"):
            error = {"error": {"code": "query_expired", "message": "this query is no longer held"}}
            route.fulfill(status=410, json=error)
        else:
            route.continue_()

    page.route("**/api/search", forget)
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.status == 200) as answer:
        page.select_option("#scope", "url_only")
    settled(page)
    again = answer.value
    assert sent == ["json", "upload"]
    assert again.status == 200 and again.json()["parameters"]["scope"] == "url_only"
    assert card_ids(page) == hit_ids(again.json())
    expect(page.locator("#error")).to_be_hidden()


def test_text_search_shows_hits(page: Page, stack: Stack) -> None:
    page.goto("/")
    page.fill("#text-input", "Danaus plexippus")
    response = search_by(page, lambda: page.press("#text-input", "Enter"))
    result = response.json()
    assert result["query"] == "text" and result["text"] == "Danaus plexippus"
    assert card_ids(page) == hit_ids(result) and len(result["hits"]) == 24
    expect(page.locator("#query-label")).to_contain_text("Danaus plexippus")
    assert parse_qs(urlsplit(page.url).query)["text"] == ["Danaus plexippus"]


def _genus_search(page: Page, stack: Stack) -> dict[str, Any]:
    page.goto("/")
    page.select_option("#rank", "genus")
    page.fill("#top-n", "9")
    return search_by(page, lambda: page.set_input_files("#file-input", str(photo(stack, 4)))).json()


def test_consensus_agreement_and_tree_are_shown(page: Page, stack: Stack) -> None:
    result = _genus_search(page, stack)
    consensus = result["consensus"]
    assert consensus["rank"] == "genus"
    expect(page.locator("#consensus-body .consensus-name")).to_contain_text(consensus["name"])
    expect(page.locator("#consensus-body")).to_contain_text(f"{consensus['hits']} of 9 hits")
    agreement = page.locator("#agreement")
    if result["agreement"] is True:
        expect(agreement).to_have_text("✓ The prediction agrees with the hits.")
    elif result["agreement"] is False:
        expect(agreement).to_contain_text("differs from the hits")
    else:
        expect(agreement).to_have_text("No prediction to compare the hits with.")
    if result["prediction_error"]:  # a prediction never fails the search; the page says why softly
        expect(page.locator("#prediction-body .soft")).to_have_text(
            f"prediction unavailable: {result['prediction_error']}"
        )
    # The tree: one top-level line per kingdom, whose counts add up to the hits.
    kingdoms = page.locator("#tree-body > ul > li > .tree-row .count")
    assert sum(int(c) for c in kingdoms.all_inner_texts()) == 9
    assert kingdoms.count() == len(result["tree"])
    tree_names = page.locator("#tree-body .taxon").all_text_contents()
    assert stack.rows[4]["kingdom"] in tree_names and stack.rows[4]["genus"] in tree_names
    # Collapsing a branch hides what is under it.
    top = page.locator("#tree-body > ul > li").first
    toggle = top.locator("> .tree-row > .tree-toggle")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(top.locator("> ul")).to_be_hidden()


def test_zero_shot_prediction_is_listed_with_probabilities(page: Page, stack: Stack) -> None:
    """Needs the embedder's POST /v1/classify, TreeOfLife labels in the test stack, and the gateway
    reading the embedder's `results[0].predictions`."""
    result = _genus_search(page, stack)
    assert result["prediction_error"] is None, result["prediction_error"]
    predictions = result["prediction"]["predictions"]
    genera = {row["genus"] for row in stack.rows}
    assert predictions and all(p["name"] in genera for p in predictions), predictions
    assert 0 < sum(p["probability"] for p in predictions) <= 1.0001
    items = page.locator("#prediction-body li.prediction")
    expect(items).to_have_count(len(predictions))
    expect(items.first).to_contain_text(predictions[0]["name"])
    expect(items.first.locator(".probability")).to_have_text(re.compile(r"^\d+(\.\d)?%$"))
    expect(page.locator("#prediction-body")).to_contain_text("at genus rank")


def test_export_csv_link_downloads_the_hits(page: Page, stack: Stack) -> None:
    page.goto("/")
    page.fill("#text-input", "tiger")
    result = search_by(page, lambda: page.click("#text-form button[type=submit]")).json()
    with page.expect_download() as download_info:
        page.click("#export-csv")
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(download.path().read_text(encoding="utf-8"))))
    assert [int(row["record_id"]) for row in rows] == hit_ids(result)
    assert rows[0]["scientific_name"] == result["hits"][0]["taxonomy"]["scientific_name"]
    json_href = page.locator("#export-json").get_attribute("href") or ""
    assert json_href.startswith("/api/search?text=tiger") and json_href.endswith("&format=json&download=true")


def test_permalink_reload_reproduces_the_hits(page: Page, stack: Stack) -> None:
    page.goto("/")
    page.fill("#top-n", "7")
    page.select_option("#scope", "url_only")
    first = search_by(page, lambda: page.set_input_files("#file-input", str(photo(stack, 5)))).json()
    link = urlsplit(page.url)
    assert parse_qs(link.query)["q"] == [first["query_id"]] and f"{link.path}?{link.query}" == first["permalink"]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#copy-link")
    expect(page.locator("#status")).to_contain_text("Link copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == stack.gateway.url + first["permalink"]
    page.wait_for_load_state("networkidle")  # no earlier search may still be answering when the page reloads
    reloaded = search_by(page, page.reload)
    assert reloaded.request.method == "GET" and reloaded.status == 200
    assert card_ids(page) == hit_ids(first)
    expect(page.locator("#top-n")).to_have_value("7")
    expect(page.locator("#scope")).to_have_value("url_only")
    # A link whose photo the gateway no longer holds says what to do.
    expired = search_by(page, lambda: page.goto("/?q=img-0123456789abcdef0123456789abcdef&top_n=7"))
    assert expired.status == 410
    expect(page.locator("#error")).to_contain_text("Upload the photo again")


@pytest.mark.parametrize("link", ["made", "without_top_n"])
def test_a_reloaded_link_shows_and_keeps_the_result_count_it_was_made_with(page: Page, stack: Stack, link: str) -> None:
    """The Results box, the hits and the next re-run agree on one count after a link is opened."""
    page.goto("/")
    expect(page.locator("#top-n")).not_to_have_value("")  # filled in when the vocabulary arrives
    default = page.locator("#top-n").input_value()
    vocabulary = page.request.get("/api/vocabulary").json()
    assert default == str(vocabulary["parameters"]["top_n"]["default"])  # the box starts at the one default
    page.fill("#text-input", "Danaus plexippus")
    made = search_by(page, lambda: page.press("#text-input", "Enter")).json()
    assert f"top_n={default}" in made["permalink"]  # carried even at the default
    url = made["permalink"] if link == "made" else "/?text=Danaus+plexippus"
    opened = search_by(page, lambda: page.goto(url)).json()
    expect(page.locator("#top-n")).to_have_value(str(opened["parameters"]["top_n"]))
    assert len(card_ids(page)) == opened["parameters"]["top_n"] == int(default) == len(opened["hits"])
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/api/search") else None)
    again = search_by(page, lambda: page.select_option("#scope", "url_only")).json()
    assert json.loads(sent[-1])["top_n"] == int(default) == again["parameters"]["top_n"]
    expect(page.locator("#top-n")).to_have_value(default)


def test_the_page_builds_its_controls_from_the_vocabulary(page: Page, stack: Stack) -> None:
    vocabulary = page.request.get("/api/vocabulary").json()
    page.goto("/")
    # The page asks for the vocabulary after it loads: its controls are built when the answer arrives.
    expect(page.locator("#scope option")).to_have_count(len(vocabulary["scopes"]))
    scopes = page.locator("#scope option").evaluate_all("options => options.map(o => [o.value, o.textContent])")
    assert scopes == [[scope["name"], scope["label"]] for scope in vocabulary["scopes"]]
    ranks = page.locator("#rank option").evaluate_all("options => options.map(o => o.value)")
    assert ranks == vocabulary["ranks"]
    expect(page.locator("#rank")).to_have_value(vocabulary["parameters"]["rank"]["default"])
    top_n = vocabulary["parameters"]["top_n"]
    assert page.locator("#top-n").get_attribute("max") == str(top_n["maximum"])
    assert page.locator("#top-n").get_attribute("min") == str(top_n["minimum"])
    expect(page.locator("#filters-hint")).to_contain_text(", ".join(vocabulary["filter_ranks"]))


def test_search_from_this_runs_a_record_search(page: Page, stack: Stack) -> None:
    """Needs the search service's GET /v1/records/{id}/vector."""
    upload(page, photo(stack, 2))
    third = page.locator("#results .hit").nth(2)
    record = int(third.get_attribute("data-record-id") or "-1")
    third.click()
    response = search_by(page, lambda: page.click("#search-from"))
    assert response.status == 200, response.text()
    result = response.json()
    assert result["query"] == "record"
    expect(page.locator("#detail")).to_be_hidden()
    assert card_ids(page)[0] == record
    expect(page.locator("#query-label")).to_contain_text(f"record {record}")
    assert parse_qs(urlsplit(page.url).query)["record"] == [str(record)]


def test_taxon_filter_keeps_only_that_taxon_and_a_bad_filter_is_explained(page: Page, stack: Stack) -> None:
    """Needs the search service's taxon filters."""
    upload(page, photo(stack, 3))
    page.fill("#filters", "order:Lepidoptera")
    result = search_by(page, lambda: page.press("#filters", "Enter")).json()
    assert result["hits"] and all(hit["taxonomy"]["order"] == "Lepidoptera" for hit in result["hits"])
    assert card_ids(page) == hit_ids(result)
    assert "filter=order%3ALepidoptera" in page.url
    expect(page.locator("#status")).to_contain_text("hits in")
    page.fill("#filters", "Lepidoptera")
    page.press("#filters", "Enter")
    expect(page.locator("#error")).to_contain_text("is not a taxon filter")
    # Nothing was searched: the previous search's summary does not stand beside the error as its outcome.
    expect(page.locator("#status")).to_have_text("")


def test_keyboard_tab_reaches_a_card_and_enter_opens_the_detail(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 6))
    page.locator("body").focus()
    for _ in range(200):  # the examples, the options, the actions and the tree's buttons come first
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.classList.contains('hit')"):
            break
    else:
        pytest.fail("Tab never reached a result card")
    focused = page.evaluate("() => document.activeElement.dataset.recordId")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    assert page.evaluate("() => document.activeElement.dataset.recordId") == focused


def test_phone_width_has_no_horizontal_scroll(page: Page, stack: Stack) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    upload(page, photo(stack, 8))
    no_overflow = "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    assert page.evaluate("() => document.documentElement.clientWidth") == 390
    assert page.evaluate(no_overflow)
    columns = page.locator("#results").evaluate("g => getComputedStyle(g).gridTemplateColumns.split(' ').length")
    assert columns == 2
    expect(page.locator("#tree")).not_to_have_attribute("open", "")  # closed on a phone: the hits come first
    page.locator("#results .hit").first.click()
    expect(page.locator("#detail")).to_be_visible()
    box = page.locator("#detail").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert page.evaluate(no_overflow)


def test_the_page_loads_nothing_from_outside_the_gateway(page_session: PageSession, stack: Stack) -> None:
    page = page_session.page
    upload(page, photo(stack, published(stack)))
    wait_for_thumbnails(page, 4)
    page.locator("#results .hit").first.click()
    page.wait_for_function("() => { const i = document.querySelector('#detail img'); return i && i.complete }")
    page.keyboard.press("Escape")
    page.fill("#text-input", "fly agaric")
    search_by(page, lambda: page.press("#text-input", "Enter"))
    assert page_session.requests and not page_session.blocked, page_session.blocked
    outside = [url for url in page_session.requests if not url.startswith((stack.gateway.url + "/", "blob:", "data:"))]
    assert outside == []
    assert any("/api/images/" in url for url in page_session.requests)
