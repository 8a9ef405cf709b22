"""The Receipts page against the live log, and against a liar in front of it.

A good receipt verifies step by step in the browser, the bundle it offers verifies with the
very command the page prints, and every finder finds. Then the lying proxy serves a
tampered inclusion proof, checkpoint, entry or registry, and each tamper must show ✗ on the
step that checks that part (and the verdict must say the receipt did not verify).
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.portal.conftest import LiveLog, Rewrite, lying, screenshot

pytestmark = pytest.mark.browser

METERLOG = Path(sys.executable).with_name("meterlog")
STEPS = (
    "Bundle format",
    "Checkpoint signature",
    "Witness cosignatures",
    "Leaf hash",
    "Inclusion proof",
    "Consistency with the latest checkpoint",
    "Entry format",
    "Edge key in the log",
    "Receipt signature",
)


def step_states(page: Page) -> dict[str, str]:
    steps = page.locator("#verification li[data-step]")
    return {
        steps.nth(i).get_attribute("data-step") or "": steps.nth(i).get_attribute("data-state")
        or ""
        for i in range(steps.count())
    }


def look_up_with_the_keyboard(page: Page, by: str, value: str) -> None:
    """Tab from the top of the page to the form, choose the finder, type, press Enter."""
    page.keyboard.press("Tab")  # the skip link
    focused = ""
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id")
        if focused == "by":
            break
    assert focused == "by", "Tab never reached the lookup form"
    page.select_option("#by", by)  # the focused select, as arrow keys would set it
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def test_a_good_receipt_verifies_in_the_browser_and_with_the_printed_command(
    page: Page, live_log: LiveLog, tmp_path: Path
) -> None:
    page.goto(live_log.portal("receipt.html"))
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    assert page.get_by_label("Find by").count() == 1
    assert page.get_by_label("Value").count() == 1
    look_up_with_the_keyboard(page, "request", "job-2-1")
    expect(page.locator("#verification .verdict")).to_have_attribute("data-verdict", "ok")
    states = step_states(page)
    assert list(states) == list(STEPS)
    assert {s: v for s, v in states.items() if v != "ok"} == {"Witness cosignatures": "skipped"}
    index = live_log.indexes["job-2-1"]
    expect(page.locator("#verification li[data-step='Inclusion proof']")).to_contain_text(
        f"leaf {index} of the tree"
    )
    screenshot(page, "receipt")

    with page.expect_download() as saving:
        page.click("#download")
    bundle = tmp_path / saving.value.suggested_filename
    saving.value.save_as(bundle)
    assert bundle.name == "job-2-1.tlog-proof"
    argv = shlex.split(page.locator("#command").inner_text())
    assert argv[:3] == ["meterlog", "verify", "bundle"] and argv[-1] == bundle.name
    assert argv[argv.index("--key") + 1] == live_log.log_vkey
    done = subprocess.run(
        [str(METERLOG), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok           receipt signature: signed by edge-portal+" in done.stdout + done.stderr


def test_a_receipt_of_a_witnessed_log_verifies_against_the_served_checkpoint(
    page: Page, witnessed_log: str, tmp_path: Path
) -> None:
    """With a witness quorum, /checkpoint serves the latest cosigned tree, which may be older
    than the bundle's: consistency is then checked from it to the bundle's tree."""
    page.goto(f"{witnessed_log}/portal/receipt.html?by=request&q=req-1")
    expect(page.locator("#verification .verdict")).to_have_attribute("data-verdict", "ok")
    states = step_states(page)
    assert states["Consistency with the latest checkpoint"] == "ok"
    assert states["Receipt signature"] == "ok"
    with page.expect_download() as saving:
        page.click("#download")
    saving.value.save_as(tmp_path / saving.value.suggested_filename)
    argv = shlex.split(page.locator("#command").inner_text())
    done = subprocess.run(
        [str(METERLOG), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("by", "value", "count"),
    [
        ("consumer", "bolt-labs", 4),
        ("job", "job-1", 3),
        ("content", "sha256:" + "01" * 32, 3),  # make_receipt's content: n % 5, one per batch
    ],
)
def test_every_finder_lists_its_receipts(
    page: Page, live_log: LiveLog, by: str, value: str, count: int
) -> None:
    page.goto(live_log.portal(f"receipt.html?by={by}&q={value}"))
    expect(page.locator("body[data-ready=yes]")).to_have_count(1)
    expect(page.locator("#results-table tbody tr")).to_have_count(count)
    page.locator("#results-table tbody tr button").first.click()
    expect(page.locator("#verification .verdict")).to_have_attribute("data-verdict", "ok")


def test_an_unknown_request_id_says_so(page: Page, live_log: LiveLog) -> None:
    page.goto(live_log.portal("receipt.html?by=request&q=no-such-request"))
    expect(page.locator("#no-results")).to_contain_text("No logged receipt has request id")


# -- the liar ----------------------------------------------------------------------------------


def rewrite_bundles(change: Callable[[list[str]], list[str]]) -> Rewrite:
    """Rewrite every bundle in /v1/receipts answers, line by line."""

    def rewrite(path: str, body: bytes) -> bytes | None:
        if not path.startswith("/v1/receipts"):
            return None
        answer = json.loads(body)
        for receipt in answer["receipts"]:
            receipt["bundle"] = "\n".join(change(receipt["bundle"].split("\n")))
        return json.dumps(answer).encode()

    return rewrite


def flip_first_proof_hash(lines: list[str]) -> list[str]:
    at = 3  # header, extra, index, then the path
    raw = bytearray(base64.b64decode(lines[at]))
    raw[0] ^= 1
    return [*lines[:at], base64.b64encode(bytes(raw)).decode(), *lines[at + 1 :]]


def change_checkpoint_root(lines: list[str]) -> list[str]:
    at = lines.index("") + 3  # the blank line, then origin, size, root
    raw = bytearray(base64.b64decode(lines[at]))
    raw[-1] ^= 1
    return [*lines[:at], base64.b64encode(bytes(raw)).decode(), *lines[at + 1 :]]


def inflate_bytes_sent(lines: list[str]) -> list[str]:
    entry = json.loads(base64.b64decode(lines[1].removeprefix("extra ")))
    entry["bytes_sent"] += 1_000_000
    forged = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    return [lines[0], "extra " + base64.b64encode(forged).decode(), *lines[2:]]


def registry_points_elsewhere(path: str, body: bytes) -> bytes | None:
    if not path.startswith("/v1/edge-keys"):
        return None
    answer = json.loads(body)
    for key in answer["edge_keys"]:
        key["entry_index"] = 1  # a receipt, not the key's registration
    return json.dumps(answer).encode()


TAMPERS = [
    pytest.param(
        rewrite_bundles(flip_first_proof_hash),
        {"Inclusion proof": "failed", "Checkpoint signature": "ok", "Receipt signature": "ok"},
        id="inclusion-proof",
    ),
    pytest.param(
        rewrite_bundles(change_checkpoint_root),
        {"Checkpoint signature": "failed", "Inclusion proof": "skipped"},
        id="checkpoint",
    ),
    pytest.param(
        rewrite_bundles(inflate_bytes_sent),
        {
            "Checkpoint signature": "ok",
            "Inclusion proof": "failed",
            "Entry format": "ok",
            "Receipt signature": "failed",
        },
        id="entry",
    ),
    pytest.param(
        registry_points_elsewhere,
        {"Inclusion proof": "ok", "Edge key in the log": "failed", "Receipt signature": "skipped"},
        id="edge-key-registry",
    ),
]


@pytest.mark.parametrize(("rewrite", "want"), TAMPERS)
def test_a_tampered_answer_fails_on_its_step(
    page: Page,
    live_log: LiveLog,
    rewrite: Rewrite,
    want: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    with lying(live_log, rewrite) as liar:
        page.goto(liar.portal("receipt.html?by=request&q=job-1-2"))
        verdict = page.locator("#verification .verdict")
        expect(verdict).to_have_attribute("data-verdict", "failed")
        expect(verdict).to_contain_text("did NOT verify")
        states = step_states(page)
        assert {step: states[step] for step in want} == want
        failed = page.locator("#verification li[data-state=failed]").first
        expect(failed).to_contain_text("✗")
        expect(failed).to_contain_text("FAILED")
        screenshot(page, f"receipt-tampered-{request.node.callspec.id}")
