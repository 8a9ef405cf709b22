"""The Auditor page: two checkpoints' consistency verified in the browser (and failing for a
tampered proof or checkpoint), and forks: a second root for one size, signed with the log's
real key as a forking log would, is caught among the listed checkpoints and when pasted."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.portal.conftest import BATCHES, LiveLog, lying, screenshot
from tests.verifier.logs import WITNESS_KEY
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.note import parse_skey

pytestmark = pytest.mark.browser


def step_states(page: Page, where: str) -> dict[str, str]:
    steps = page.locator(f"{where} li[data-step]")
    return {
        steps.nth(i).get_attribute("data-step") or "": steps.nth(i).get_attribute("data-state")
        or ""
        for i in range(steps.count())
    }


def forked_note(live_log: LiveLog, tree_size: int) -> str:
    """A checkpoint of ``tree_size`` with another root, signed with the log's own key: what a
    log that forks would sign."""
    key = parse_skey((live_log.server.data_dir / "log.key").read_text(encoding="utf-8").strip())
    fork = Checkpoint(key.name, tree_size, bytes(range(32)))
    return sign_checkpoint(fork, [key.signer()]).decode()


def test_consistency_of_two_checkpoints_verifies_in_the_browser(
    page: Page, live_log: LiveLog
) -> None:
    page.goto(live_log.portal("auditor.html"))
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    assert page.get_by_label("Older checkpoint").count() == 1
    assert page.get_by_label("Newer checkpoint").count() == 1
    sizes = page.locator("#old option").all_inner_texts()
    assert len(sizes) >= 4  # the empty tree, the registration, and one per batch
    # Keyboard only: Tab to the button, Enter submits.
    page.focus("#new")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Verify consistency"
    page.keyboard.press("Enter")
    expect(page.locator("#consistency .verdict")).to_have_attribute("data-verdict", "ok")
    assert step_states(page, "#consistency") == {
        "Older checkpoint signature": "ok",
        "Newer checkpoint signature": "ok",
        "Consistency proof": "ok",
    }
    expect(page.locator("#fork-verdict")).to_have_attribute("data-verdict", "ok")
    screenshot(page, "auditor")


def flip_consistency_proof(path: str, body: bytes) -> bytes | None:
    if not path.startswith("/v1/proofs/consistency"):
        return None
    answer = json.loads(body)
    raw = bytearray(base64.b64decode(answer["proof"][0]))
    raw[5] ^= 0x80
    answer["proof"][0] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(answer).encode()


def test_a_tampered_consistency_proof_fails_in_the_browser(page: Page, live_log: LiveLog) -> None:
    with lying(live_log, flip_consistency_proof) as liar:
        page.goto(liar.portal("auditor.html"))
        expect(page.locator("body[data-ready=yes]")).to_have_count(1)
        page.select_option("#old", index=2)  # not the empty tree: its proof has hashes
        page.click("text=Verify consistency")
        expect(page.locator("#consistency .verdict")).to_have_attribute("data-verdict", "failed")
        states = step_states(page, "#consistency")
        assert states["Older checkpoint signature"] == "ok"
        assert states["Consistency proof"] == "failed"
        expect(page.locator("#consistency li[data-state=failed]")).to_contain_text(
            "proof does not lead to the"
        )
        screenshot(page, "auditor-tampered-proof")


def test_a_second_signed_root_for_one_size_is_shown_as_a_fork(
    page: Page, live_log: LiveLog
) -> None:
    size = len(live_log.receipts) + 1
    forged = forked_note(live_log, size)

    def add_fork(path: str, body: bytes) -> bytes | None:
        if not path.startswith("/v1/checkpoints?"):
            return None
        answer = json.loads(body)
        listed = answer["checkpoints"]
        fork = {**listed[0], "id": listed[0]["id"] + 1000, "checkpoint": forged}
        answer["checkpoints"] = [fork, *listed]
        return json.dumps(answer).encode()

    with lying(live_log, add_fork) as liar:
        page.goto(liar.portal("auditor.html"))
        expect(page.locator("body[data-ready=yes]")).to_have_count(1)
        expect(page.locator("#fork-verdict")).to_have_attribute("data-verdict", "failed")
        expect(page.locator("#fork-verdict")).to_contain_text("FORK: the log key signed two roots")
        screenshot(page, "auditor-fork")


def test_a_pasted_checkpoint_is_compared_with_the_log(page: Page, live_log: LiveLog) -> None:
    page.goto(live_log.portal("auditor.html"))
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    # An honest old checkpoint: the live log's own after its first batch.
    answer = httpx.get(f"{live_log.url}/v1/checkpoints/{1 + BATCHES[0][2]}", timeout=10)
    assert answer.status_code == 200, answer.text
    honest = answer.text
    page.fill("#foreign-note", honest)
    page.click("text=Compare with this log")
    expect(page.locator("#foreign-result .verdict")).to_have_attribute("data-verdict", "ok")

    page.fill("#foreign-note", forked_note(live_log, len(live_log.receipts) + 1))
    page.click("text=Compare with this log")
    expect(page.locator("#foreign-result .verdict")).to_have_attribute("data-verdict", "failed")
    states = step_states(page, "#foreign-result")
    assert states["Their checkpoint's signature"] == "ok"
    assert states["Consistency with this log"] == "failed"

    page.fill("#foreign-note", honest.replace("\n\n", "\nextra\n\n", 1))
    page.click("text=Compare with this log")
    expect(
        page.locator('#foreign-result li[data-step="Their checkpoint\'s signature"]')
    ).to_have_attribute("data-state", "failed")


def test_the_witnesses_view_of_the_log_is_shown(page: Page, witnessed_log: str) -> None:
    page.goto(f"{witnessed_log}/portal/auditor.html")
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    view = page.locator("#witness-view")
    expect(view).to_contain_text(WITNESS_KEY.name)
    expect(view).to_contain_text("has cosigned up to size")
    expect(view).to_contain_text("No witness has refused a checkpoint")
