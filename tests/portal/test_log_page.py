"""The Log page against the live log: the latest checkpoint verified in the browser, the
growth chart, the anchors section and the edge-key registry, with real data; and against a
log that anchors on the in-process chain (eth-tester), whose anchors the browser checks, and
one that a real witness cosigns."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.log_server.conftest import make_receipt
from tests.log_server.server_process import now_ms, register_edge, start_server, submit
from tests.portal.conftest import EDGE, LIVE_ORIGIN, LiveLog, screenshot
from tests.verifier.logs import WITNESS_KEY
from tlog.note import SigningKey, format_vkey

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


@pytest.fixture(scope="module")
def anchored_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live log that anchors on the in-process chain (eth-tester), with a final anchor."""
    data_dir = tmp_path_factory.mktemp("portal-anchored") / "data"
    anchoring = ["--anchor-rpc", "eth-tester", "--anchor-interval", "0.2"]
    anchoring += ["--anchor-confirmations", "1", "--anchor-poll-interval", "0.1"]
    server = start_server(data_dir, origin="test.example/anchored", extra_args=anchoring)
    try:
        register_edge(server, EDGE)
        with httpx.Client(timeout=30) as client:
            batch = [make_receipt(n, served_at_ms=now_ms(), edge_key=EDGE) for n in range(3)]
            assert submit(client, server.url, batch).status_code == 200
            deadline = time.monotonic() + 30
            while not client.get(f"{server.url}/v1/anchors?status=final").json()["anchors"]:
                assert time.monotonic() < deadline, "no final anchor in 30 s"
                time.sleep(0.1)
        yield server.url
    finally:
        server.stop()


def test_anchors_are_listed_and_checked_against_the_latest_checkpoint(
    page: Page, anchored_log: str
) -> None:
    page.goto(f"{anchored_log}/portal/")
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    rows = page.locator("#anchor-table tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 1
    for i in range(rows.count()):
        assert rows.nth(i).get_attribute("data-state") == "ok"
        expect(rows.nth(i)).to_contain_text("✓ a prefix of the tree of size")
    anchors = httpx.get(f"{anchored_log}/v1/anchors?status=final", timeout=10).json()["anchors"]
    # No public explorer knows eth-tester's chain: the transaction hash is shown in full.
    expect(page.locator("#anchors")).to_contain_text(anchors[0]["tx_hash"])
    expect(page.locator("#anchors")).to_contain_text("No public explorer is known for this chain")
    screenshot(page, "log-anchored")


def test_the_witness_that_cosigned_is_verified_and_named(page: Page, witnessed_log: str) -> None:
    page.goto(f"{witnessed_log}/portal/")
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    witnesses = page.locator("#checkpoint li[data-step='Witness cosignatures']")
    expect(witnesses).to_have_attribute("data-state", "ok")
    expect(witnesses).to_contain_text("1 of the 1 witnesses the log lists cosigned")
    row = page.locator("#signers tr", has_text=WITNESS_KEY.name)
    expect(row).to_contain_text("a witness the log lists")
    expect(row).to_contain_text("verified")
    screenshot(page, "log-witnessed")


def test_a_pinned_key_is_used_and_a_wrong_one_fails(page: Page, live_log: LiveLog) -> None:
    page.goto(live_log.portal("index.html#pin"))
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    expect(page.locator("#trust-note")).to_have_attribute("data-pinned", "no")

    page.get_by_label("Log verifier key").fill("not a key")
    page.get_by_label("Log verifier key").press("Enter")
    expect(page.locator("#pin-status")).to_contain_text("Not pinned: vkey")

    impostor = SigningKey(LIVE_ORIGIN, bytes(32))  # the log's name, another key
    page.get_by_label("Log verifier key").fill(format_vkey(impostor.verifier()))
    page.get_by_role("button", name="Pin this key").click()
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    note = page.locator("#trust-note")
    expect(note).to_have_attribute("data-pinned", "yes")
    expect(note).to_contain_text("The log now states a different key!")
    signature = page.locator("#checkpoint li[data-step='Checkpoint signature']")
    expect(signature).to_have_attribute("data-state", "failed")
    screenshot(page, "log-wrong-pinned-key")

    page.goto(live_log.portal("receipt.html?by=request&q=job-1-0"))
    expect(page.locator("#verification .verdict")).to_have_attribute("data-verdict", "failed")
    steps = page.locator("#verification li[data-step='Checkpoint signature']")
    expect(steps).to_have_attribute("data-state", "failed")

    page.goto(live_log.portal("index.html#pin"))
    page.get_by_label("Log verifier key").fill(live_log.log_vkey)
    page.get_by_role("button", name="Pin this key").click()
    expect(page.locator("#trust-note")).to_have_attribute("data-pinned", "yes")
    expect(page.locator("#trust-note")).not_to_contain_text("different key")
    expect(signature).to_have_attribute("data-state", "ok")

    page.get_by_role("button", name="Forget the pinned key").click()
    expect(page.locator("#trust-note")).to_have_attribute("data-pinned", "no")
