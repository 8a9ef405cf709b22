"""log_server.budgets with a fixed clock: a token bucket's arithmetic (admission, refill,
charges below zero, the burst), the per-signer budgets (all or none, the retry time in
whole seconds, each signer alone, memory that follows the active signers), never sleeping.
Then the routes without a token, with budgets no test refills: a signer over its budget is
answered 429 with Retry-After and the field named, and nothing is stored; forged entries,
duplicates and refusals spend nothing; one signer's budget holds no other back."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from log_server.app import create_app
from log_server.budgets import Budgets, OverBudget, TokenBucket
from log_server.config import Config
from tests.log_server.conftest import LogUnderTest, make_receipt, started
from tlog.entry import (
    Dispute,
    Entry,
    Manifest,
    Receipt,
    Statement,
    encode_entry,
    sign_dispute,
    sign_manifest,
    sign_statement,
)
from tlog.note import SigningKey, format_vkey


def test_a_bucket_admits_up_to_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=10, updated_s=100.0)
    assert bucket.wait_s(10, 100.0) == 0.0  # full: a whole burst at once
    bucket.charge(10, 100.0)
    assert bucket.wait_s(1, 100.0) == 0.5  # one token comes every half second
    assert bucket.wait_s(4, 100.0) == 2.0
    assert bucket.wait_s(1, 100.25) == 0.25
    assert bucket.wait_s(1, 100.5) == 0.0
    bucket.charge(1, 100.5)
    assert bucket.tokens == 0.0
    assert bucket.wait_s(10, 1000.0) == 0.0 and bucket.tokens == 10.0  # never above the burst


def test_a_request_larger_than_the_burst_needs_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=5, updated_s=0.0)
    assert bucket.wait_s(50, 0.0) == 0.0  # not refused forever: a full bucket admits it
    bucket.charge(50, 0.0)
    assert bucket.tokens == -45.0
    assert bucket.wait_s(1, 0.0) == 46.0  # and the next waits for the debt
    assert bucket.wait_s(1, 46.0) == 0.0


def test_a_clock_that_goes_back_refills_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3, updated_s=50.0)
    bucket.charge(3, 50.0)
    assert bucket.wait_s(1, 10.0) == 1.0
    assert bucket.wait_s(1, 51.0) == 0.0


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (float("nan"), 1), (1.0, 0)]
)
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"^(rate|burst) "):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError, match=r"^(rate|burst) "):
        Budgets(rate, burst)


def test_budgets_admit_all_signers_or_none_and_say_when_in_whole_seconds() -> None:
    budgets = Budgets(rate_per_s=10.0, burst=100)
    assert budgets.admit({"a": 100, "b": 1}, 0.0) is None
    budgets.charge({"a": 100, "b": 1}, 0.0)
    # "a" has nothing left: a request of both is refused whole, naming "a"; 0.1 s -> 1 s.
    assert budgets.admit({"b": 1, "a": 1}, 0.0) == OverBudget("a", 1)
    assert budgets.admit({"b": 99}, 0.0) is None  # "b" is not held back by "a"
    assert budgets.admit({"a": 55}, 0.0) == OverBudget("a", 6)  # 5.5 s, rounded up
    assert budgets.admit({"a": 55}, 5.5) is None
    assert budgets.admit({"a": 0}, 0.0) is None  # no entries, no charge
    assert budgets.admit({}, 0.0) is None


def test_only_charges_spend_a_budget() -> None:
    budgets = Budgets(rate_per_s=1.0, burst=2)
    for _ in range(10):  # admitted requests whose entries were duplicates or refused
        assert budgets.admit({"a": 2}, 0.0) is None
    budgets.charge({"a": 2}, 0.0)
    assert budgets.admit({"a": 1}, 0.0) == OverBudget("a", 1)


def test_full_buckets_are_dropped_as_signers_come_and_go() -> None:
    budgets = Budgets(rate_per_s=1.0, burst=1, max_signers=4)
    for n in range(4):
        budgets.charge({f"s{n}": 1}, 0.0)
    assert len(budgets) == 4
    budgets.admit({"s4": 1}, 0.5)  # four buckets, none full yet: none dropped
    assert len(budgets) == 5
    budgets.charge({"s4": 1}, 0.5)
    for n in range(5, 10):
        budgets.admit({f"s{n}": 1}, 10.0)  # by now the first five are full again
    assert len(budgets) <= 6
    assert budgets.admit({"s4": 1}, 10.0) is None  # a dropped bucket comes back full


# -- the routes without a token, in process, on SQLite and PostgreSQL ------------------------

ALICE = SigningKey("acct:alice", b"\x51" * 32)
BOB = SigningKey("acct:bob", b"\x52" * 32)
IMPOSTOR = SigningKey("acct:alice", b"\x53" * 32)
BILLING = SigningKey("billing.test", b"\x54" * 32)
EDGE, OTHER_EDGE = SigningKey("edge-1", b"\x55" * 32), SigningKey("edge-2", b"\x56" * 32)
SLOW = 0.01
"""Tokens a second: none come back while a test runs (one takes 100 s)."""


class Log(LogUnderTest):
    async def admin_post(self, path: str, body: dict[str, Any]) -> None:
        answer = await self.client.post(path, json=body, headers=self.admin)
        assert answer.status_code == 200, answer.text

    async def submit(self, *receipts: Receipt) -> httpx.Response:
        body = b"\n".join(encode_entry(r) for r in receipts)
        return await self.client.post(
            "/v1/receipts", content=body, headers={"Content-Type": "application/jsonl"}
        )

    async def send(self, path: str, entry: Entry) -> httpx.Response:
        return await self.client.post(path, content=encode_entry(entry))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def log(storage_url: str, tmp_path: Path) -> AsyncIterator[Log]:
    keys = tmp_path / "billing.keys"
    keys.write_text(format_vkey(BILLING.verifier()) + "\n")
    config = Config(
        data_dir=tmp_path / "data", origin="test.example/budgets", db=storage_url,
        pool_interval_s=0.01, checkpoint_interval_s=3600, billing_keys=keys,
        receipt_rate=SLOW, receipt_burst=3, creator_rate=SLOW, creator_burst=2,
        statement_rate=SLOW, statement_burst=1,
    )  # fmt: skip
    async with started(create_app(config)) as client:
        log = Log(client, config.data_dir)
        for key in (EDGE, OTHER_EDGE):
            body = {"action": "register", "edge": key.name, "key": format_vkey(key.verifier())}
            await log.admin_post("/v1/admin/edge-keys", {**body, "valid_from_ms": 0})
        for key in (ALICE, BOB):
            body = {"creator_id": key.name, "key": format_vkey(key.verifier()), "currency": "USD"}
            await log.admin_post("/v1/admin/creators", body)
        yield log


SERVED_MS = time.time_ns() // 1_000_000


def receipt(i: int, key: SigningKey = EDGE) -> Receipt:
    return make_receipt(i, served_at_ms=SERVED_MS, edge_key=key)


def assert_over_budget(answer: httpx.Response, field: str, signer: str) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["field"] == field
    assert f"{signer} is over its budget" in answer.json()["error"]["reason"]
    retry = answer.headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= 1 / SLOW + 1


@pytest.mark.anyio
async def test_an_edge_over_its_budget_is_refused_429_and_nothing_is_stored(log: Log) -> None:
    forged = [dataclasses.replace(receipt(i), request_id=f"forged-{i}") for i in range(5)]
    assert (await log.submit(*forged)).status_code == 422  # bad signatures spend nothing
    first = await log.submit(receipt(1), receipt(2))
    assert [r["status"] for r in first.json()["results"]] == ["logged", "logged"]
    again = await log.submit(receipt(1))  # a duplicate costs nothing
    assert again.json()["results"][0]["status"] == "duplicate"
    size = await log.size()
    # edge-1 has one receipt left: a batch with two of its receipts is refused whole, the
    # other edge's receipt in it too (edges resubmit by request_id).
    answer = await log.submit(receipt(3, OTHER_EDGE), receipt(4), receipt(5))
    assert_over_budget(answer, "receipt.edge", EDGE.name)
    assert await log.size() == size
    assert (await log.client.get(f"/v1/receipts/{OTHER_EDGE.name}/req-3")).status_code == 404
    answer = await log.submit(receipt(3, OTHER_EDGE), receipt(4))
    assert [r["status"] for r in answer.json()["results"]] == ["logged", "logged"]
    assert_over_budget(await log.submit(receipt(5)), "receipt.edge", EDGE.name)
    assert (await log.submit(receipt(6, OTHER_EDGE))).status_code == 200  # its own budget
    assert await log.size() == size + 3


def manifest(key: SigningKey, version: int) -> Manifest:
    """Version ``version`` of the one piece of content of ``key``'s name."""
    content = "sha256:" + hashlib.sha256(key.name.encode()).hexdigest()
    digest = "sha256:" + hashlib.sha256(f"{key.name} v{version}".encode()).hexdigest()
    entry = Manifest(
        "publish", key.name, content, version, digest, ("training",), (("training", "0.05"),),
        "https://l.test/1",
    )  # fmt: skip
    return sign_manifest(entry, key)


@pytest.mark.anyio
async def test_a_creator_over_its_budget_is_refused_429_after_its_signature(log: Log) -> None:
    for _ in range(3):  # not Alice's key: refused as such (403), never held to her budget
        answer = await log.send("/v1/manifests", manifest(IMPOSTOR, 1))
        assert answer.status_code == 403
    assert (await log.send("/v1/manifests", manifest(ALICE, 1))).json()["status"] == "logged"
    assert (await log.send("/v1/manifests", manifest(ALICE, 1))).json()["status"] == "duplicate"
    stale = dataclasses.replace(manifest(ALICE, 1), manifest="sha256:" + "ee" * 32)
    stale = sign_manifest(stale, ALICE)
    assert (await log.send("/v1/manifests", stale)).status_code == 409  # costs nothing
    assert (await log.send("/v1/manifests", manifest(ALICE, 2))).json()["status"] == "logged"
    size = await log.size()
    assert_over_budget(
        await log.send("/v1/manifests", manifest(ALICE, 3)), "manifest.creator_id", ALICE.name
    )
    dispute = Dispute("open", ALICE.name, "sha256:" + "00" * 32, 1, "too low")
    assert_over_budget(
        await log.send("/v1/disputes", sign_dispute(dispute, ALICE)),
        "dispute.creator_id", ALICE.name,
    )  # fmt: skip
    assert await log.size() == size
    assert (await log.send("/v1/manifests", manifest(IMPOSTOR, 3))).status_code == 403
    assert (await log.send("/v1/manifests", manifest(BOB, 1))).json()["status"] == "logged"


@pytest.mark.anyio
async def test_a_billing_key_over_its_budget_is_refused_429(log: Log) -> None:
    def statement(creator: SigningKey, digest: str) -> Statement:
        entry = Statement(digest, creator.name, "USD", 0, 4, 1, 1, 0, 0, 0, 1)
        return sign_statement(entry, BILLING)

    first = await log.send("/v1/statements", statement(ALICE, "sha256:" + "a1" * 32))
    assert first.json()["results"][0]["status"] == "logged", first.text
    size = await log.size()
    answer = await log.send("/v1/statements", statement(BOB, "sha256:" + "b1" * 32))
    assert_over_budget(answer, "statement.billing_key", format_vkey(BILLING.verifier()))
    assert await log.size() == size
