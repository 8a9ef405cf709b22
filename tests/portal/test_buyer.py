"""The Buyer page in Debian's Chromium against the live log of tests/portal/conftest.py: a
job's receipts, each verified in the browser; the job's download, which the Python verifier
accepts bundle by bundle; a tampered receipt that fails visibly; a job with no receipts."""

from __future__ import annotations

import io
import json
import zipfile
from base64 import b64encode
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from tests.portal.conftest import BATCHES, EDGE, LiveLog, lying, screenshot
from tlog.bundle import parse_bundle
from tlog.entry import Receipt, decode_entry
from tlog.note import parse_vkey
from verifier.offline import TrustPolicy, check_bundle

pytestmark = pytest.mark.browser


def _job_page(live_log: LiveLog, job: str, base: str | None = None) -> str:
    return f"{base or live_log.url}/portal/buyer.html?job={job}&key={quote(live_log.log_vkey)}"


def _expected(live_log: LiveLog, job: str) -> list[int]:
    return sorted(live_log.indexes[r.request_id] for r in live_log.receipts if r.job_id == job)


def test_a_jobs_receipts_are_verified_and_its_download_verifies_in_python(
    page: Page, live_log: LiveLog
) -> None:
    job = "job-9"
    expected = _expected(live_log, job)
    assert len(expected) == next(count for _, j, count in BATCHES if j == job)
    page.goto(_job_page(live_log, job))
    expect(page.locator("body[data-loaded=buyer]")).to_be_attached()
    expect(page.locator("#checkpoint-steps li[data-state=ok]")).to_have_count(1)
    rows = page.locator("#receipts-table tbody tr")
    expect(rows).to_have_count(len(expected))
    assert [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.index)")] == expected
    expect(page.locator("#receipts-table td[data-state=ok]")).to_have_count(len(expected))
    expect(page.locator("[data-verdict=ok]")).to_contain_text(f"All {len(expected)} receipt(s)")
    expect(page.locator("#verify-cli")).to_contain_text("meterlog verify bundle --key")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download all bundles (zip)").click()
    data = Path(download.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        bundles = {name: archive.read(name) for name in archive.namelist()}
    assert sorted(bundles) == sorted(f"receipt-{i}.tlog-proof" for i in expected)
    trust = TrustPolicy(log_keys=(parse_vkey(live_log.log_vkey),))
    for name, bundle in bundles.items():
        report = check_bundle(bundle, trust, edge_keys=[EDGE.verifier()], subject=name)
        assert report.ok, report.checks
        entry = decode_entry(parse_bundle(bundle).extra or b"")
        assert isinstance(entry, Receipt) and entry.job_id == job

    expect(page.locator("section.scope h2")).to_have_text(
        "What this page verified, and what it did not"
    )
    screenshot(page, "buyer")


def test_a_tampered_receipt_fails_visibly(page: Page, live_log: LiveLog) -> None:
    job = "job-1"

    def rewrite(path: str, body: bytes) -> bytes | None:
        if not path.startswith("/v1/receipts?"):
            return None
        answer = json.loads(body)
        bundle = parse_bundle(answer["receipts"][0]["bundle"].encode())
        entry = json.loads(bundle.extra or b"")
        entry["bytes_sent"] += 1  # the receipt as logged, with one more byte delivered
        text = answer["receipts"][0]["bundle"]
        old = b64encode(bundle.extra or b"").decode()
        new = b64encode(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode())
        answer["receipts"][0]["bundle"] = text.replace(old, new.decode())
        return json.dumps(answer).encode()

    with lying(live_log, rewrite) as liar:
        page.goto(_job_page(live_log, job, liar.url))
        expect(page.locator("body[data-loaded=buyer]")).to_be_attached()
        failed = page.locator("#receipts-table td[data-state=failed]")
        expect(failed).to_have_count(1)
        expect(failed).to_contain_text("FAILED: inclusion")
        expect(page.locator("[data-verdict=failed]")).to_contain_text("1 of 3 receipt(s) FAILED")


def test_a_job_without_receipts_says_so(page: Page, live_log: LiveLog) -> None:
    page.goto(_job_page(live_log, "no-such-job"))
    expect(page.locator("body[data-loaded=buyer]")).to_be_attached()
    expect(page.locator("#summary")).to_contain_text("The log has no receipt of job no-such-job")
