"""The Log page against the live log: the latest checkpoint verified in the browser, the
growth chart, the anchors section and the edge-key registry, with real data."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.portal.conftest import EDGE, LiveLog, screenshot

pytestmark = pytest.mark.browser


def test_the_log_page_verifies_the_latest_checkpoint_and_shows_the_log(
    page: Page, live_log: LiveLog
) -> None:
    page.goto(live_log.portal(""))
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    size = len(live_log.receipts) + 1  # and the edge key's registration
    expect(page.locator("#tree-size")).to_have_attribute("data-size", str(size))
    signature = page.locator("#checkpoint li[data-step='Checkpoint signature']")
    expect(signature).to_have_attribute("data-state", "ok")
    expect(page.locator("#signers")).to_contain_text("the log's signed time")
    expect(page.locator("#trust-note")).to_contain_text(live_log.log_vkey)
    expect(page.locator("#growth svg polyline")).to_have_count(1)
    expect(page.locator("#edge-key-table")).to_contain_text(EDGE.name)
    expect(page.locator("#no-anchoring")).to_be_visible()
    screenshot(page, "log")
