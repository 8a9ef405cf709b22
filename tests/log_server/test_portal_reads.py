"""The read routes behind the portal's Creator and Buyer pages, in process (httpx over ASGI,
the app's own lifespan), on SQLite and PostgreSQL: a logged statement's document and the
receipts behind each of its lines (paged, each a bundle that verifies), a creator's
provisional usage since its currency's last run, and a job's receipts as one zip of
.tlog-proof files that the offline verifier accepts; bad input named, 404 for what is not
there."""

from __future__ import annotations

import dataclasses
import io
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from log_server.app import create_app
from log_server.config import Config
from tests.log_server.conftest import LogUnderTest, started
from tests.tlog.test_statement import document
from tlog.bundle import parse_bundle
from tlog.entry import (
    Receipt,
    Statement,
    decode_entry,
    encode_entry,
    sign_receipt,
    sign_statement,
)
from tlog.note import SigningKey, format_vkey, parse_vkey
from tlog.statement import StatementDocument, format_statement, statement_digest
from verifier.offline import TrustPolicy, check_bundle

pytestmark = pytest.mark.anyio

ORIGIN = "test.example/portal"
EDGE = SigningKey("edge-p", b"\x31" * 32)
ALICE = SigningKey("acct:alice", b"\x32" * 32)
BILLING = SigningKey("billing.test", b"\x33" * 32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclasses.dataclass
class Log(LogUnderTest):
    runs: Path

    @property
    def trust(self) -> TrustPolicy:
        key = parse_vkey((self.data_dir / "log.vkey").read_text().strip())
        return TrustPolicy(log_keys=(key,))


@pytest.fixture
async def log(storage_url: str, tmp_path: Path) -> AsyncIterator[Log]:
    keys = tmp_path / "billing.keys"
    keys.write_text(format_vkey(BILLING.verifier()) + "\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    config = Config(
        data_dir=tmp_path / "data", origin=ORIGIN, db=storage_url, pool_interval_s=0.01,
        checkpoint_interval_s=3600, billing_keys=keys, statements_dir=runs,
    )  # fmt: skip
    app = create_app(config)
    async with started(app) as client:
        yield Log(client, config.data_dir, runs)


def receipt(i: int, **changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "request_id": f"r-{i}", "edge": EDGE.name, "consumer_id": "acme", "token_id": "t-1",
        "job_id": "job-1" if i % 2 else "job-2", "scope": "training",
        "content_id": "sha256:" + "c1" * 32, "creator_id": ALICE.name,
        "manifest": "sha256:" + "a1" * 32, "bytes_sent": 100 + i, "cache": "miss",
        "served_at_ms": time.time_ns() // 1_000_000,
    }  # fmt: skip
    fields.update(changes)
    return sign_receipt(Receipt(**fields), EDGE)


async def setup(log: Log, receipts: int) -> list[int]:
    """An edge, Alice, and ``receipts`` receipts of hers: their indices."""
    body = {"action": "register", "edge": EDGE.name, "key": format_vkey(EDGE.verifier()),
            "valid_from_ms": 0}  # fmt: skip
    assert (await log.client.post("/v1/admin/edge-keys", json=body, headers=log.admin)).is_success
    creator = {"creator_id": ALICE.name, "key": format_vkey(ALICE.verifier()), "currency": "USD"}
    assert (await log.client.post("/v1/admin/creators", json=creator, headers=log.admin)).is_success
    batch = "\n".join(encode_entry(receipt(i)).decode() for i in range(receipts))
    answer = await log.client.post(
        "/v1/receipts", content=batch, headers={"Content-Type": "application/jsonl"}
    )
    assert answer.status_code == 200, answer.text
    return [r["index"] for r in answer.json()["results"]]


def statement_of(indices: list[int], end: int) -> StatementDocument:
    """A valid statement of Alice's over [0, end): line 1 counts the first index, line 2
    the rest (the money is tlog's test document's, which adds up)."""
    base = document()
    lines = (
        dataclasses.replace(base.lines[0], leaf_indices=(indices[0],)),
        dataclasses.replace(base.lines[1], leaf_indices=tuple(indices[1:])),
        dataclasses.replace(base.lines[2], leaf_indices=()),
    )
    return dataclasses.replace(
        base, range_start=0, range_end=end, tree_size=end, lines=lines, excluded=(),
        creator_id=ALICE.name, creator_key=format_vkey(ALICE.verifier()),
        disputes=(), released=(), previous=None, previous_index=None,
        totals=dataclasses.replace(base.totals, released_minor=0, payable_minor=777,
                                   paid_minor=777),
    )  # fmt: skip


async def log_statement(log: Log, doc: StatementDocument, write: bool = True) -> str:
    data = format_statement(doc)
    digest = statement_digest(data)
    if write:
        (log.runs / "run-1").mkdir(exist_ok=True)
        (log.runs / "run-1" / "statement-acct_alice-0000.json").write_bytes(data)
    entry = sign_statement(
        Statement(
            digest=digest, creator_id=doc.creator_id, currency="USD",
            range_start=doc.range_start, range_end=doc.range_end,
            period_end_ms=doc.period_end_ms, lines=len(doc.lines), paid_minor=777,
            carry_minor=0, reserve_minor=81, reserve_release_ms=doc.reserve_release_ms,
        ),
        BILLING,
    )  # fmt: skip
    answer = await log.client.post("/v1/statements", content=encode_entry(entry))
    assert answer.status_code == 200, answer.text
    return digest


async def test_a_statement_document_and_the_receipts_behind_its_lines(log: Log) -> None:
    indices = await setup(log, 7)
    doc = statement_of(indices, await log.size())
    digest = await log_statement(log, doc)
    served = await log.client.get(f"/v1/statements/{digest}/document")
    assert served.status_code == 200
    assert statement_digest(served.content) == digest
    assert served.content == format_statement(doc)

    seen: list[int] = []
    after: int | None = -1
    while after is not None:
        params = {"limit": 4} if after < 0 else {"after": after, "limit": 4}
        page = await log.client.get(f"/v1/statements/{digest}/lines/2/receipts", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["leaf_count"] == len(indices) - 1
        for item in body["receipts"]:
            bundle = item["bundle"].encode()
            assert check_bundle(bundle, log.trust).ok
            entry = decode_entry(parse_bundle(bundle).extra or b"")
            assert isinstance(entry, Receipt) and entry.creator_id == ALICE.name
            seen.append(item["index"])
        after = body["next_after"]
    assert seen == indices[1:]
    first = (await log.client.get(f"/v1/statements/{digest}/lines/1/receipts")).json()
    assert [r["index"] for r in first["receipts"]] == indices[:1]
    missing = await log.client.get(f"/v1/statements/{digest}/lines/4/receipts")
    assert missing.status_code == 404 and "no line 4" in missing.text
    empty = (await log.client.get(f"/v1/statements/{digest}/lines/3/receipts")).json()
    assert (empty["receipts"], empty["next_after"], empty["leaf_count"]) == ([], None, 0)


async def test_what_is_not_there_is_404_and_bad_input_names_the_field(log: Log) -> None:
    indices = await setup(log, 3)
    doc = statement_of(indices, await log.size())
    unlogged = statement_digest(b"nothing")
    digest = await log_statement(log, doc, write=False)  # logged, but no file under runs/
    cases = [
        (f"/v1/statements/{unlogged}/document", 404, None),
        (f"/v1/statements/{digest}/document", 404, None),
        (f"/v1/statements/{digest}/lines/1/receipts", 404, None),
        (f"/v1/statements/{digest}/lines/01/receipts", 400, "line"),
        (f"/v1/statements/{digest}/lines/x/receipts", 400, "line"),
        (f"/v1/statements/{digest}/lines/1/receipts?limit=0", 400, "limit"),
        ("/v1/creators/acct:nobody/provisional", 404, None),
        ("/v1/receipts.zip", 400, "query"),
        ("/v1/receipts.zip?job=job-1&consumer=acme", 400, "query"),
        ("/v1/receipts.zip?job=no-such-job", 404, None),
        ("/v1/receipts.zip?job=a%20b", 400, "job"),
    ]
    for path, status, field in cases:
        answer = await log.client.get(path)
        assert answer.status_code == status, (path, answer.text)
        if field is not None:
            assert answer.json()["error"]["field"] == field, path


async def test_a_file_changed_on_disk_is_not_served_under_its_old_digest(log: Log) -> None:
    indices = await setup(log, 2)
    digest = await log_statement(log, statement_of(indices, await log.size()))
    assert (await log.client.get(f"/v1/statements/{digest}/document")).status_code == 200
    path = log.runs / "run-1" / "statement-acct_alice-0000.json"
    path.write_bytes(path.read_bytes().replace(b'"USD"', b'"EUR"'))
    assert (await log.client.get(f"/v1/statements/{digest}/document")).status_code == 404


async def test_provisional_usage_counts_from_where_the_last_run_ended(log: Log) -> None:
    indices = await setup(log, 5)
    before = (await log.client.get(f"/v1/creators/{ALICE.name}/provisional")).json()
    assert before["provisional"] is True
    assert (before["from_index"], before["after_statement"], before["receipts"]) == (0, None, 5)
    end = await log.size()
    digest = await log_statement(log, statement_of(indices, end))
    batch = "\n".join(encode_entry(receipt(i)).decode() for i in range(10, 13))
    later = await log.client.post(
        "/v1/receipts", content=batch, headers={"Content-Type": "application/jsonl"}
    )
    assert later.status_code == 200
    other = receipt(20, creator_id="acct:bob")
    await log.client.post("/v1/receipts", content=encode_entry(other))
    after = (await log.client.get(f"/v1/creators/{ALICE.name}/provisional")).json()
    assert (after["from_index"], after["after_statement"], after["receipts"]) == (end, digest, 3)
    assert after["tree_size"] == await log.size()


async def test_a_job_download_is_a_zip_of_bundles_the_verifier_accepts(log: Log) -> None:
    indices = await setup(log, 9)
    answer = await log.client.get("/v1/receipts.zip", params={"job": "job-1"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert 'filename="receipts-job-job-1.zip"' in answer.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        names = archive.namelist()
        bundles = {name: archive.read(name) for name in names}
    expected = [i for n, i in enumerate(indices) if n % 2]
    assert names == [f"receipt-{i}.tlog-proof" for i in expected]
    for data in bundles.values():
        assert check_bundle(data, log.trust, edge_keys=[EDGE.verifier()]).ok
        entry = decode_entry(parse_bundle(data).extra or b"")
        assert isinstance(entry, Receipt) and entry.job_id == "job-1"


async def test_a_logged_digest_of_a_file_that_is_no_statement_has_no_lines(log: Log) -> None:
    indices = await setup(log, 2)
    doc = statement_of(indices, await log.size())
    data = b'{"format":"something-else/v1","lines":[]}'
    (log.runs / "statement-odd.json").write_bytes(data)
    digest = statement_digest(data)
    entry = sign_statement(
        Statement(
            digest=digest, creator_id=ALICE.name, currency="USD", range_start=0,
            range_end=doc.range_end, period_end_ms=doc.period_end_ms, lines=1, paid_minor=0,
            carry_minor=0, reserve_minor=0, reserve_release_ms=0,
        ),
        BILLING,
    )  # fmt: skip
    assert (await log.client.post("/v1/statements", content=encode_entry(entry))).is_success
    assert (await log.client.get(f"/v1/statements/{digest}/document")).content == data
    answer = await log.client.get(f"/v1/statements/{digest}/lines/1/receipts")
    assert answer.status_code == 404 and "no document" in answer.text
