"""What the browser tests do to the page and read from it, and what they read from the stack."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import axe_playwright_python
import httpx
from playwright.sync_api import BrowserContext, Page, Response

from tests.stack import Stack

SEARCH = "/api/search"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium package: Playwright cannot download its own here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class PageSession:
    """A page on the stack's gateway, with every request it made and every script error it met."""

    page: Page
    context: BrowserContext
    base_url: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def photo(stack: Stack, index: int) -> Path:
    return stack.images / stack.rows[index]["path"]


def published(stack: Stack) -> int:
    return next(i for i, row in enumerate(stack.rows) if row["url"])


def image_embeddings(stack: Stack) -> float:
    """How many image embeddings the embedder has answered, from its own /metrics."""
    metrics = httpx.get(stack.embedder.url + "/metrics", timeout=10).text
    pattern = r'http_requests_total\{method="POST",route="/v1/embed/image",service="embedder",status="200"\} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def _is_search(response: Response) -> bool:
    return response.url.split("?")[0].endswith(SEARCH)


def settled(page: Page) -> None:
    """Wait until the page has shown the newest search's answer (or its error)."""
    page.wait_for_function("() => !document.getElementById('results').hasAttribute('aria-busy')")


def search_by(page: Page, action: Any) -> Response:
    """Run `action`, which starts a search, and return the gateway's answer once the page shows it."""
    with page.expect_response(_is_search) as answer:
        action()
    settled(page)
    return answer.value


def upload(page: Page, *files: Path) -> dict[str, Any]:
    """Open the page, choose the photos with the file picker, and return the search result."""
    page.goto("/")
    response = search_by(page, lambda: page.set_input_files("#file-input", [str(f) for f in files]))
    assert response.status == 200, response.text()
    return response.json()


def card_ids(page: Page) -> list[int]:
    return [int(v) for v in page.locator("#results .hit").evaluate_all("cards => cards.map(c => c.dataset.recordId)")]


def hit_ids(result: dict[str, Any]) -> list[int]:
    return [hit["record_id"] for hit in result["hits"]]


def wait_for_thumbnails(page: Page, count: int) -> None:
    """Wait until the first `count` cards have each either a decoded thumbnail or a placeholder."""
    page.wait_for_function(
        """count => {
            const cards = [...document.querySelectorAll('#results .hit')].slice(0, count);
            return cards.length === count && cards.every(card => {
                const img = card.querySelector('img');
                return card.querySelector('.placeholder') || (img && img.complete && img.naturalWidth > 0);
            });
        }""",
        arg=count,
    )


def decoded_thumbnails(page: Page) -> list[int]:
    """The natural widths of the cards' thumbnails that have decoded."""
    return page.locator("#results .hit img").evaluate_all(
        "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.naturalWidth)"
    )


# axe-core as the pinned axe-playwright-python package ships it (requirements/dev.txt): one file, loaded
# into the page by the tests, never fetched from anywhere.
AXE_JS = Path(axe_playwright_python.__file__).parent / "axe.min.js"


def axe_violations(page: Page, context: str = "document") -> list[str]:
    """axe-core's violations on the page as it is now (WCAG 2.x A/AA and best practices), one line each:
    the rule, its impact, and the first elements it names."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Evaluated by the debugging protocol, not as a <script>: the page's Content-Security-Policy
        # (script-src 'self') rightly refuses an inline script tag, and the test leaves it as served.
        page.evaluate(AXE_JS.read_text(encoding="utf-8") + "\n;0")
    violations = page.evaluate(
        """async (context) => {
            const found = await axe.run(context === 'document' ? document : document.querySelector(context),
                                        { resultTypes: ['violations'] });
            return found.violations.map(v => `${v.id} (${v.impact}): ${v.help} at ` +
                v.nodes.slice(0, 3).map(n => n.target.join(' ')).join('; '));
        }""",
        context,
    )
    return list(violations)
