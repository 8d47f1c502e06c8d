"""The page as biologists and curators use it, in Chromium against the four real services:
accessibility (axe-core), the phone's first screen, comparing a hit with the query, taxon names from
the collection, the caps, examples, errors as the server wrote them, and a refused export."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.pages import axe_violations, card_ids, photo, published, search_by, settled, upload
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_axe_finds_no_violation_empty_results_detail_error_and_phone(page: Page, stack: Stack, tmp_path: Path) -> None:
    page.goto("/")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    page.wait_for_function("() => !document.getElementById('examples').hidden")
    assert axe_violations(page) == []
    upload(page, photo(stack, published(stack)))
    assert axe_violations(page) == []
    page.locator("#results .hit").first.click()
    expect(page.locator("#detail")).to_be_visible()
    assert axe_violations(page) == []
    page.keyboard.press("Escape")
    broken = tmp_path / "photo.jpg"
    broken.write_bytes(b"not a photo at all")
    search_by(page, lambda: page.set_input_files("#file-input", str(broken)))
    expect(page.locator("#error")).to_be_visible()
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    settled(page)
    assert axe_violations(page) == []


def test_a_card_is_named_by_what_it_shows(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 4))
    card = page.locator("#results .hit").first
    assert card.get_attribute("aria-label") is None
    name = page.evaluate("() => document.querySelector('#results .hit').innerText")
    expect(card).to_have_accessible_name(" ".join(name.split()))


def test_on_a_phone_the_first_hit_is_in_view_after_a_search(page: Page, stack: Stack) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    upload(page, photo(stack, 5))
    box = page.locator("#results .hit").first.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 844, box
    results = page.locator("#results").bounding_box()
    tree = page.locator("#tree").bounding_box()
    assert results and tree and tree["y"] > results["y"]  # the prediction and the tree come after the hits


def test_the_detail_shows_the_query_beside_the_hit_and_arrows_move_between_hits(page: Page, stack: Stack) -> None:
    result = upload(page, photo(stack, published(stack)))
    page.locator("#results .hit").first.click()
    query = page.locator("#detail .compare-query img")
    hit = page.locator("#detail .compare-hit img, #detail .compare-hit .placeholder").first
    expect(query).to_be_visible()
    assert query.get_attribute("src", timeout=1000).startswith("blob:")
    a, b = query.bounding_box(), hit.bounding_box()
    assert a and b and abs(a["width"] - b["width"]) < 2 and abs(a["height"] - b["height"]) < 2
    assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"]  # side by side
    expect(page.locator("#detail .hit-position")).to_contain_text(f"Hit 1 of {len(result['hits'])}")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#detail .hit-position")).to_contain_text("Hit 2 of")
    expect(page.locator("#detail .compare-hit figcaption")).to_contain_text("#2")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # no hit before the first: stays
    expect(page.locator("#detail .hit-position")).to_contain_text("Hit 1 of")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Escape")
    expect(page.locator("#results .hit").nth(1)).to_be_focused()


def test_typing_a_name_suggests_taxa_from_the_collection(page: Page, stack: Stack) -> None:
    genus = stack.rows[0]["genus"]
    count = sum(1 for row in stack.rows if row["genus"] == genus)
    page.goto("/")
    page.locator("#text-input").press_sequentially(genus[:4].lower(), delay=20)
    options = page.locator("#text-suggestions option")
    expect(options.first).to_be_attached()
    values = {o.get_attribute("value"): o.get_attribute("label") for o in options.all()}
    assert values[genus] == f"genus · {count} records"
    page.locator("#filters").press_sequentially(f"genus:{genus[:3]}", delay=20)
    expect(page.locator(f"#filter-suggestions option[value='genus:{genus}']")).to_be_attached()


def test_clicking_a_tree_node_filters_to_it(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 2))
    order = stack.rows[2]["order"]
    node = page.locator("#tree-body .tree-filter", has_text=order).first
    result = search_by(page, lambda: node.click()).json()
    assert {"rank": "order", "value": order} in result["parameters"]["filters"]
    assert result["hits"] and all(hit["taxonomy"]["order"] == order for hit in result["hits"])
    expect(page.locator("#filters")).to_have_value(f"order:{order}")


def test_a_filter_that_matches_nothing_says_so_and_offers_the_nearest_names(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 3))
    family = stack.rows[3]["family"]
    misspelt = family[:-1] + "x"
    page.fill("#filters", f"family:{misspelt}")
    search_by(page, lambda: page.press("#filters", "Enter"))
    note = page.locator("#results .no-match")
    expect(note).to_contain_text(f"No record in the collection has family “{misspelt}”")
    nearest = note.get_by_role("button", name=family)
    result = search_by(page, lambda: nearest.click()).json()
    assert result["hits"] and all(hit["taxonomy"]["family"] == family for hit in result["hits"])


def test_the_caps_are_offered_with_the_vocabularys_bounds_and_sent(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 1))
    bounds = httpx.get(stack.gateway.url + "/api/vocabulary", timeout=10).json()["parameters"]["max_per_species"]
    maximum = next(part["maximum"] for part in bounds["anyOf"] if part.get("type") == "integer")
    expect(page.locator("#max-per-species")).to_have_attribute("max", str(maximum))
    page.fill("#max-per-species", "1")
    result = search_by(page, lambda: page.press("#max-per-species", "Enter")).json()
    assert result["parameters"]["max_per_species"] == 1
    names = [hit["taxonomy"]["scientific_name"] for hit in result["hits"]]
    assert len(names) == len(set(names))
    assert parse_qs(urlsplit(page.url).query)["max_per_species"] == ["1"]
    page.reload()
    settled(page)
    expect(page.locator("#max-per-species")).to_have_value("1")


def test_an_example_searches_without_a_photo(page: Page, stack: Stack) -> None:
    page.goto("/")
    first = page.locator("#examples .example").first
    expect(first).to_be_visible()
    result = search_by(page, lambda: first.click()).json()
    assert result["query"] == "record" and card_ids(page)


def test_a_photo_link_shows_the_photo_while_the_server_holds_it(page: Page, stack: Stack) -> None:
    upload(page, photo(stack, 7))
    page.reload()
    settled(page)
    page.wait_for_function(
        "() => { const i = document.getElementById('preview'); return i.complete && i.naturalWidth > 0 }"
    )
    assert "/api/queries/" in (page.locator("#preview").get_attribute("src") or "")


def test_an_error_is_shown_as_the_server_wrote_it(page: Page, stack: Stack, tmp_path: Path) -> None:
    page.goto("/")
    broken = tmp_path / "photo.jpg"
    broken.write_bytes(b"not a photo at all")
    search_by(page, lambda: page.set_input_files("#file-input", str(broken)))
    expect(page.locator("#error")).to_have_text(re.compile(r"^photo\.jpg: "))


def _floor3(value: float) -> str:
    """The page's floor3: rounded down to 3 places (the same float arithmetic as JavaScript's)."""
    return f"{math.floor(value * 1000) / 1000:.3f}"


def _measured_scale(stack: Stack, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        scale = httpx.get(stack.search.url + "/v1/stats", timeout=10).json()["similarity_scale"]
        if scale is not None:
            return scale
        time.sleep(0.2)
    raise AssertionError("the search service did not measure its similarity scale")


def test_the_similarity_note_states_once_what_is_high_for_this_model_and_collection(page: Page, stack: Stack) -> None:
    scale = _measured_scale(stack)
    upload(page, photo(stack, published(stack)))
    note = page.locator("#similarity-scale")
    expect(note).to_be_visible()
    same, unrelated = scale["same_species"], scale["other_genera"]
    photos = (
        f"the nearest other photo of the same species typically scores above {_floor3(same['p25'])} (3 in 4 do; "
        f"median {_floor3(same['median'])}); photos of other genera score around {_floor3(unrelated['median'])}. "
        f"Measured on {scale['samples']} records of the collection."
    )
    expect(note).to_have_text(f"For this model and collection, {photos}", use_inner_text=True)
    assert scale["samples"] == len(stack.rows)  # the demo is smaller than the sample: every record
    # A cosine never passes 1, and a bound is never shown above what was measured.
    figures = [float(f) for f in re.findall(r"\d\.\d{3}", note.inner_text())]
    assert len(figures) == 3 and all(f <= 1 for f in figures)
    assert figures[0] <= same["p25"] and figures[1] <= same["median"]
    # Once on the page, near the hits: not per card, and still once after a search by name, where it says
    # that a name scores far lower against photos than a photo does.
    page.fill("#text-input", "tiger")
    search_by(page, lambda: page.press("#text-input", "Enter"))
    assert page.get_by_text("For this model and collection").count() == 1
    expect(note).to_have_text(
        "This search is by name: a name against photos scores far lower than a photo against photos, so only the "
        f"order of these hits counts. For this model and collection, photo against photo, {photos}",
        use_inner_text=True,
    )
    # Back to a photo: the photo wording again.
    upload(page, photo(stack, published(stack)))
    expect(note).to_have_text(f"For this model and collection, {photos}", use_inner_text=True)
    assert page.locator("#similarity-note").evaluate("n => n.nextElementSibling.className") == "result-layout"


def test_without_a_measured_scale_the_page_states_no_number(page: Page, stack: Stack) -> None:
    """The search service told not to measure (as when its collection has no taxonomy): the general note only."""
    stack.search.stop()
    stack.search.env["SEARCH_SIMILARITY_SCALE_SAMPLES"] = "0"
    try:
        stack.search.start()
        stack.search.wait_ready()
        assert httpx.get(stack.gateway.url + "/api/info", timeout=10).json()["index"]["similarity_scale"] is None
        upload(page, photo(stack, published(stack)))
        expect(page.locator("#similarity-note")).to_contain_text("cosine of the angle")
        expect(page.locator("#similarity-scale")).to_be_hidden()
        assert page.get_by_text("For this model and collection").count() == 0
    finally:
        stack.search.stop()
        del stack.search.env["SEARCH_SIMILARITY_SCALE_SAMPLES"]
        stack.search.start()
        stack.search.wait_ready()


def test_the_detail_shows_the_licence_the_metadata_holds_and_otherwise_where_it_is(page: Page, stack: Stack) -> None:
    def pick(licensed: bool) -> int:
        return next(
            i for i, row in enumerate(stack.rows)
            if row["url"] and row["source_dataset"] == "gbif" and bool(row["license"]) == licensed
        )  # fmt: skip

    for record, licensed in ((pick(True), True), (pick(False), False)):
        page.goto(f"/?record={record}")
        settled(page)
        page.locator(f'#results .hit[data-record-id="{record}"]').click()
        detail = page.locator("#detail")
        expect(detail).to_be_visible()
        occurrence = f"https://www.gbif.org/occurrence/{stack.rows[record]['source_id']}"
        link = page.locator("#rights-note a")
        expect(link).to_have_attribute("href", occurrence)
        terms = detail.locator("dl.source dt").all_inner_texts()
        if licensed:
            expect(detail.locator("dl.source")).to_contain_text("Licence" + "CC0-1.0")
            expect(detail.locator("dl.source")).to_contain_text("Rights holder" + stack.rows[record]["rights_holder"])
            expect(page.locator("#rights-note")).to_have_text(
                "Licence and rights as the collection's metadata gives them; the source record's page is the "
                "authority on them."
            )
            assert axe_violations(page) == []
        else:
            assert "Licence" not in terms and "Rights holder" not in terms
            expect(page.locator("#rights-note")).to_have_text(
                "The collection's metadata holds no licence or rights for this image: the source record's page "
                "gives its licence and rights holder."
            )
        page.keyboard.press("Escape")


def test_a_refused_export_says_so(page: Page, stack: Stack) -> None:
    """Last in this module: it spends the gateway's per-minute search allowance."""
    upload(page, photo(stack, 9))
    with httpx.Client(base_url=stack.gateway.url, timeout=30) as client:
        for _ in range(200):
            if client.get("/api/search", params={"record": 0, "top_n": 1}).status_code == 429:
                break
    page.click("#export-csv")
    expect(page.locator("#error")).to_contain_text("The export failed")
    expect(page.locator("#error")).to_contain_text("Try again in")
