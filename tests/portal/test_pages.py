"""What every page of the portal owes: served by the log under /portal/ with a sane cache
policy, nothing fetched from anywhere but the log (no CDN, no external font), a label on
every control, the common navigation reachable by keyboard, a scope box saying what was
and was not verified, and text colours at WCAG AA contrast."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from portal import STATIC_DIR
from tests.portal.conftest import LiveLog

pytestmark = pytest.mark.browser

PAGES = ("index.html", "receipt.html", "auditor.html", "creator.html", "buyer.html")
VERIFYING_PAGES = ("index.html", "receipt.html", "auditor.html")
NAV = ["Log", "Receipts", "Auditor", "Creator", "Buyer"]


def test_the_log_serves_the_portal_with_revalidation(live_log: LiveLog) -> None:
    with httpx.Client(base_url=live_log.url, timeout=10) as client:
        index = client.get("/portal/")
        assert index.status_code == 200
        assert index.text == (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        assert index.headers["cache-control"] == "no-cache"
        assert index.headers["x-content-type-options"] == "nosniff"
        module = client.get("/portal/js/tlog.js")
        assert module.headers["content-type"].startswith("text/javascript")
        assert module.headers["cache-control"] == "no-cache"
        again = client.get("/portal/js/tlog.js", headers={"If-None-Match": module.headers["etag"]})
        assert again.status_code == 304
        assert client.get("/portal").status_code == 307  # to /portal/
        missing = client.get("/portal/nope.html")
        assert missing.status_code == 404
        assert client.get("/checkpoint").headers["cache-control"] == "public, max-age=1"


def test_every_static_file_ships_with_the_package() -> None:
    """pyproject's package-data globs cover every file under portal/static/."""
    shipped = {"*.html", "*.css", "js/*.js"}
    files = [p.relative_to(STATIC_DIR) for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert files
    unshipped = [f for f in files if not any(f.match(glob) for glob in shipped)]
    assert unshipped == []
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'portal = ["py.typed", "static/*.html", "static/*.css", "static/js/*.js"]' in pyproject


@pytest.mark.parametrize("name", PAGES)
def test_each_page_is_self_contained_labelled_and_navigable(
    page: Page, live_log: LiveLog, name: str
) -> None:
    origins: set[str] = set()
    page.on("request", lambda request: origins.add(urlsplit(request.url).netloc))
    page.goto(live_log.portal(name))
    page.wait_for_load_state("networkidle")
    assert origins == {urlsplit(live_log.url).netloc}

    assert page.locator("html").get_attribute("lang") == "en"
    assert page.title().endswith("— meterlog portal")
    expect(page.locator("h1")).to_have_count(1)
    nav = page.get_by_role("navigation", name="Portal")
    assert nav.get_by_role("link").all_inner_texts() == NAV
    expect(nav.locator("[aria-current=page]")).to_have_count(1)

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea")]
             .filter((c) => c.type !== "hidden" && c.labels.length === 0
                            && !c.getAttribute("aria-label") && !c.getAttribute("aria-labelledby"))
             .map((c) => c.id || c.name || c.outerHTML)"""
    )
    assert unlabelled == []

    # Keyboard: the first Tab shows the skip link, the next ones walk the navigation in order.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    walked = []
    for _ in NAV:
        page.keyboard.press("Tab")
        walked.append(page.evaluate("document.activeElement.textContent"))
    assert walked == NAV
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # the focus ring is visible


@pytest.mark.parametrize("name", VERIFYING_PAGES)
def test_each_verifying_page_says_what_it_verified_and_what_it_did_not(
    page: Page, live_log: LiveLog, name: str
) -> None:
    page.goto(live_log.portal(name))
    scope = page.locator("section.claims")
    expect(scope).to_contain_text("What this page verified, and what it did not")
    assert page.locator("#verified li").count() >= 2
    assert page.locator("#not-verified li").count() >= 2
    expect(page.locator("#trust-note")).to_contain_text("Log key:")


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_the_palette_meets_wcag_aa_contrast() -> None:
    css = (STATIC_DIR / "style.css").read_text(encoding="utf-8")
    colour = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    pairs = [
        ("fg", "bg"),
        ("muted", "bg"),
        ("muted", "panel"),
        ("link", "bg"),
        ("ok", "ok-bg"),
        ("bad", "bad-bg"),
        ("warn", "warn-bg"),
        ("fg", "panel"),
    ]
    low = {f"{a} on {b}": round(contrast(colour[a], colour[b]), 2) for a, b in pairs}
    assert {k: v for k, v in low.items() if v < 4.5} == {}
    assert contrast("#ffffff", "#14213d") >= 4.5  # the navigation bar and buttons
    assert contrast("#4a4a4a", "#e6f4ea") >= 4.5  # step details on a verified step
    assert contrast("#4a4a4a", "#fdecec") >= 4.5  # ... and on a failed one
