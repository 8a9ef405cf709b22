"""The Creator page in Debian's Chromium against a live log that a real billing run billed.

``billed`` is a real ``meterlog serve`` (``--billing-keys``, ``--statements`` on the billing
runs' directory) with an edge, a creator and its published manifest; receipts of hers are
logged, ``meterlog billing run`` bills them and logs the statement, and more receipts are
logged after it (her provisional usage). The page must show the statement verified (its
document's digest, its entry's inclusion), its lines and totals, the receipts behind a line
(each bundle verified in the browser), the provisional usage marked as such, a CSV that is
byte for byte the one billing wrote, and a dispute form whose entry the Python core verifies;
bad dispute input is refused with the field named and nothing stored; a tampered receipt or
document fails visibly.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, expect

from billing.policy import EXAMPLE
from cli.main import main
from tests.log_server.conftest import make_receipt
from tests.log_server.server_process import (
    ServerProcess,
    now_ms,
    register_edge,
    start_server,
    submit,
)
from tests.portal.conftest import LiveLog, lying, screenshot
from tlog.entry import Dispute, Manifest, decode_entry, encode_entry, sign_manifest, verify_dispute
from tlog.note import SigningKey, format_skey, format_vkey
from tlog.statement import parse_statement

pytestmark = pytest.mark.browser

EDGE = SigningKey("edge-creator", bytes(range(40, 72)))
ALICE = SigningKey("acct:alice", bytes(range(72, 104)))
IMPOSTOR = SigningKey("acct:alice", bytes(range(104, 136)))
"""A key named like Alice's that the log did not register."""
BOB = SigningKey("acct:bob", bytes(range(136, 168)))
CAROL = SigningKey("acct:carol", bytes(range(200, 232)))
"""Paid in EUR, which no run has billed yet."""
BILLING = SigningKey("billing.test", bytes(range(168, 200)))
CONTENT = ("sha256:" + "c1" * 32, "sha256:" + "c2" * 32)
MANIFEST = ("sha256:" + "a1" * 32, "sha256:" + "a2" * 32)
BILLED = 6
PROVISIONAL = 3


@dataclass
class Billed:
    server: ServerProcess
    statement: Path
    csv: Path
    digest: str
    provisional: list[int]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log_vkey(self) -> str:
        return (self.server.data_dir / "log.vkey").read_text(encoding="utf-8").strip()

    def creator_page(self, base: str | None = None, creator: str = ALICE.name) -> str:
        query = f"creator={quote(creator)}&key={quote(self.log_vkey)}"
        return f"{base or self.url}/portal/creator.html?{query}"

    def tree_size(self) -> int:
        size: int = httpx.get(f"{self.url}/healthz", timeout=10).json()["tree_size"]
        return size


def _receipts(start: int, count: int) -> list[object]:
    return [
        make_receipt(
            n, served_at_ms=now_ms(), edge_key=EDGE, request_id=f"alice-{n}",
            consumer_id=f"acme-{n % 2}", job_id=f"job-{n % 3}", creator_id=ALICE.name,
            content_id=CONTENT[n % 2], manifest=MANIFEST[n % 2], bytes_sent=1000 + n,
        )
        for n in range(start, start + count)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Billed]:
    root = tmp_path_factory.mktemp("billed")
    (root / "billing.keys").write_text(format_vkey(BILLING.verifier()) + "\n")
    (root / "billing.key").write_text(format_skey(BILLING) + "\n")
    (root / "billing.key").chmod(0o600)
    (root / "policy.toml").write_text(EXAMPLE.replace("minimum_minor = 1000", "minimum_minor = 1"))
    runs = root / "runs"
    runs.mkdir()
    extra = ["--billing-keys", str(root / "billing.keys"), "--statements", str(runs)]
    server = start_server(root / "data", origin="test.example/billed", extra_args=extra)
    try:
        register_edge(server, EDGE)
        admin = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for key, currency in ((ALICE, "USD"), (BOB, "USD"), (CAROL, "EUR")):
                body = {"creator_id": key.name, "key": format_vkey(key.verifier()),
                        "currency": currency}  # fmt: skip
                assert client.post("/v1/admin/creators", json=body, headers=admin).is_success
            for content, manifest in zip(CONTENT, MANIFEST, strict=True):
                entry = sign_manifest(
                    Manifest(action="publish", creator_id=ALICE.name, content_id=content,
                             version=1, manifest=manifest, scopes=("training",),
                             terms=(("training", "0.05"),), license="https://l.test/1"),
                    ALICE,
                )  # fmt: skip
                assert client.post("/v1/manifests", content=encode_entry(entry)).is_success
            assert submit(client, server.url, _receipts(0, BILLED)).status_code == 200  # type: ignore[arg-type]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main([
                "billing", "run", "--log", server.url, "--key",
                str(server.data_dir / "log.vkey"), "--policy", str(root / "policy.toml"),
                "--billing-key-file", str(root / "billing.key"), "--out", str(runs / "run-1"),
                "--json",
            ])  # fmt: skip
        assert status == 0
        (summary,) = json.loads(out.getvalue())["statements"]
        with httpx.Client(timeout=30) as client:
            later = submit(client, server.url, _receipts(BILLED, PROVISIONAL))  # type: ignore[arg-type]
        assert later.status_code == 200
        yield Billed(
            server, runs / "run-1" / summary["file"], runs / "run-1" / summary["csv"],
            summary["digest"], [r["index"] for r in later.json()["results"]],
        )  # fmt: skip
    finally:
        server.stop()


def _loaded(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("body[data-loaded=creator]")).to_be_attached()


def test_the_page_shows_a_verified_statement_its_lines_receipts_and_provisional_usage(
    page: Page, billed: Billed
) -> None:
    document = parse_statement(billed.statement.read_bytes())
    _loaded(page, billed.creator_page())
    expect(page.locator("#checkpoint-steps li[data-state=ok]")).to_have_count(1)
    expect(page.locator("#statement-steps li[data-state=ok]")).to_have_count(2)
    expect(page.locator("#statement-steps [data-verdict=ok]")).to_be_visible()
    expect(page.locator("#lines-table tbody tr")).to_have_count(len(document.lines))

    provisional = page.locator("#provisional")
    expect(provisional.locator("h2")).to_contain_text("PROVISIONAL")
    expect(provisional.locator("[data-receipts]")).to_have_attribute(
        "data-receipts", str(PROVISIONAL)
    )
    rows = provisional.locator("tr.provisional")
    expect(rows).to_have_count(PROVISIONAL)
    assert [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.index)")] == (
        billed.provisional
    )
    expect(provisional.locator("td[data-state=ok]")).to_have_count(PROVISIONAL)

    page.get_by_role("button", name="Receipts of line 1").click()
    line = page.locator("#line-receipts-table tbody tr")
    expect(line).to_have_count(len(document.lines[0].leaf_indices))
    shown = [int(i) for i in line.evaluate_all("rs => rs.map(r => r.dataset.index)")]
    assert shown == list(document.lines[0].leaf_indices)
    expect(page.locator("#line-receipts-table td[data-state=ok]")).to_have_count(len(shown))

    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert Path(download.value.path()).read_bytes() == billed.csv.read_bytes()
    assert download.value.suggested_filename == billed.csv.name

    expect(page.locator("section.scope h2")).to_have_text(
        "What this page verified, and what it did not"
    )
    screenshot(page, "creator")


def test_the_receipts_behind_a_line_and_the_provisional_ones_page_on(
    page: Page, billed: Billed
) -> None:
    document = parse_statement(billed.statement.read_bytes())
    indices = list(document.lines[0].leaf_indices)
    assert len(indices) > 2
    _loaded(page, billed.creator_page() + "&limit=2")
    page.get_by_role("button", name="Receipts of line 1").click()
    expect(page.locator("#line-receipts-summary")).to_contain_text("Line 1 counts")
    rows = page.locator("#line-receipts-table tbody tr")
    shown: list[int] = []
    while True:
        expect(page.locator("#line-receipts-table td[data-state=ok]")).to_have_count(rows.count())
        page_indices = [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.index)")]
        assert page_indices and len(page_indices) <= 2
        shown += page_indices
        if not page.locator("#line-more").is_visible():
            break
        page.get_by_role("button", name="Next page", exact=True).click()
        expect(rows.first).not_to_have_attribute("data-index", str(page_indices[0]))
    assert shown == indices

    provisional = page.locator("#provisional tr.provisional")
    expect(provisional).to_have_count(2)
    first = [int(i) for i in provisional.evaluate_all("rs => rs.map(r => r.dataset.index)")]
    page.get_by_role("button", name="Next provisional page").click()
    expect(provisional.first).not_to_have_attribute("data-index", str(first[0]))
    rest = [int(i) for i in provisional.evaluate_all("rs => rs.map(r => r.dataset.index)")]
    assert first + rest == billed.provisional
    expect(page.locator("#provisional-more")).to_be_hidden()


def test_a_creator_no_run_has_billed_yet(page: Page, billed: Billed) -> None:
    _loaded(page, billed.creator_page(creator=CAROL.name))
    expect(page.locator("#provisional [data-receipts]")).to_have_attribute("data-receipts", "0")
    expect(page.locator("#provisional-summary")).to_contain_text("since the log began")
    expect(page.locator("#statements")).to_contain_text("No statement for this creator")


def test_the_dispute_form_writes_a_dispute_entry_the_python_core_verifies(
    page: Page, billed: Billed
) -> None:
    _loaded(page, billed.creator_page())
    page.get_by_role("button", name="Dispute line 1").click()
    page.get_by_label("Reason").fill('job-1 was a retry, not a "new" delivery')
    command = page.locator("#dispute-cli")
    expect(command).to_contain_text("meterlog billing dispute")
    expect(command).to_contain_text("--line 1")
    expect(command).to_contain_text(f"meterlog billing dispute {billed.statement.name} ")
    page.get_by_label("Your creator signing key").fill(format_skey(ALICE))
    before = billed.tree_size()
    page.get_by_role("button", name="Sign and send the dispute").click()
    result = page.locator("#dispute-result.ok")
    expect(result).to_contain_text("Dispute logged")
    expect(result).to_contain_text("inclusion proof verified here")
    index = int(result.get_attribute("data-index") or "-1")
    assert index >= before
    entries = httpx.get(f"{billed.url}/v1/entries", params={"start": index, "end": index + 1})
    entry = decode_entry(entries.json()["entries"][0]["entry"].encode())
    assert isinstance(entry, Dispute)
    assert (entry.statement, entry.line, entry.creator_id) == (billed.digest, 1, ALICE.name)
    verify_dispute(entry, ALICE.verifier())
    disputes = httpx.get(f"{billed.url}/v1/disputes", params={"open": "1"}).json()["disputes"]
    assert [(d["statement"], d["line"]) for d in disputes] == [(billed.digest, 1)]
    expect(page.locator("#dispute-key")).to_have_value("")  # the key is not kept
    expect(page.locator('#lines-table tr[data-line="1"] .disputed')).to_be_visible()


def test_a_resolved_line_is_disputed_again_following_its_close(page: Page, billed: Billed) -> None:
    """After the operator resolves line 1 (the test above opened it), the page offers the
    line again, and the open it signs follows the close: the log takes it (an open without
    that binding would be refused, and an old one re-posted is only a duplicate)."""
    resolve = {"creator_id": ALICE.name, "statement": billed.digest, "line": 1, "reason": "ok"}
    admin = {"Authorization": f"Bearer {billed.server.token}"}
    closed = httpx.post(f"{billed.url}/v1/admin/disputes", json=resolve, headers=admin)
    assert closed.status_code == 200, closed.text
    _loaded(page, billed.creator_page())
    page.get_by_role("button", name="Dispute line 1").click()
    page.get_by_label("Reason").fill("still a retry")
    page.get_by_label("Your creator signing key").fill(format_skey(ALICE))
    page.get_by_role("button", name="Sign and send the dispute").click()
    result = page.locator("#dispute-result.ok")
    expect(result).to_contain_text("Dispute logged")
    index = int(result.get_attribute("data-index") or "-1")
    entries = httpx.get(f"{billed.url}/v1/entries", params={"start": index, "end": index + 1})
    entry = decode_entry(entries.json()["entries"][0]["entry"].encode())
    assert isinstance(entry, Dispute)
    assert (entry.action, entry.line, entry.follows) == ("open", 1, closed.json()["index"])
    verify_dispute(entry, ALICE.verifier())
    expect(page.locator('#lines-table tr[data-line="1"] .disputed')).to_be_visible()


@pytest.mark.parametrize(
    "case",
    [
        ("2", "", ALICE, "dispute.reason"),
        ("2", "naïve reason", ALICE, "dispute.reason"),
        ("0", "a reason", ALICE, "dispute.line"),
        ("99", "a reason", ALICE, "dispute.line: the statement has"),
        ("2", "a reason", BOB, "key: the key is acct:bob's"),
        ("2", "a reason", None, "key: not PRIVATE+KEY"),
        ("2", "a reason", IMPOSTOR, "The log refused it (HTTP 403): dispute.signature"),
    ],
)
def test_bad_dispute_input_is_refused_with_the_field_named_and_nothing_stored(
    page: Page, billed: Billed, case: tuple[str, str, SigningKey | None, str]
) -> None:
    line, reason, key, message = case
    _loaded(page, billed.creator_page())
    page.get_by_role("button", name="Dispute line 2").click()
    page.get_by_label("Line", exact=True).fill(line)
    page.get_by_label("Reason").fill(reason)
    page.get_by_label("Your creator signing key").fill(
        "PRIVATE+KEY+nonsense" if key is None else format_skey(key)
    )
    before = billed.tree_size()
    disputes = httpx.get(f"{billed.url}/v1/disputes").json()
    page.get_by_role("button", name="Sign and send the dispute").click()
    result = page.locator("#dispute-result.error")
    expect(result).to_contain_text("Not sent")
    expect(result).to_contain_text(message)
    assert billed.tree_size() == before
    assert httpx.get(f"{billed.url}/v1/disputes").json() == disputes


def _tamper_first_bundle(body: bytes) -> bytes:
    answer = json.loads(body)
    bundle = answer["receipts"][0]["bundle"]
    head, _, rest = bundle.partition("\nindex ")
    answer["receipts"][0]["bundle"] = head + "\nindex " + rest.replace("A", "B", 1)
    return json.dumps(answer).encode()


def test_a_tampered_receipt_and_a_tampered_document_fail_visibly(
    page: Page, billed: Billed
) -> None:
    def rewrite(path: str, body: bytes) -> bytes | None:
        if "/lines/1/receipts" in path:
            return _tamper_first_bundle(body)
        return None

    live = LiveLog(billed.server)
    with lying(live, rewrite) as liar:
        _loaded(page, billed.creator_page(liar.url))
        expect(page.locator("#statement-steps [data-verdict=ok]")).to_be_visible()
        page.get_by_role("button", name="Receipts of line 1").click()
        failed = page.locator("#line-receipts-table td[data-state=failed]")
        expect(failed).to_have_count(1)
        expect(failed).to_contain_text("FAILED")
        expect(page.locator("#line-receipts-summary")).to_contain_text("1 FAILED verification")

    def tampered_document(path: str, body: bytes) -> bytes | None:
        return body.replace(b'"USD"', b'"EUR"') if path.endswith("/document") else None

    with lying(live, tampered_document) as liar:
        _loaded(page, billed.creator_page(liar.url))
        expect(page.locator("#statement-steps [data-verdict=failed]")).to_be_visible()
        expect(page.locator('#statement-steps li[data-step="document digest"]')).to_have_attribute(
            "data-state", "failed"
        )
