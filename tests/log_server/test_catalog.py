"""The log's catalog and billing routes in process (httpx over ASGI, the app's own lifespan),
on SQLite and PostgreSQL: creators, manifests, statements, disputes and revenue each logged by
the rules of log_server.catalog, refused with the right status and field, never stored when
refused; and the read routes the portal and billing use."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from log_server.app import create_app
from log_server.config import Config
from tests.log_server.conftest import LogUnderTest, started
from tlog.bundle import parse_bundle
from tlog.entry import (
    Creator,
    Dispute,
    Manifest,
    Statement,
    canonical_json,
    decode_entry,
    encode_entry,
    sign_dispute,
    sign_manifest,
    sign_statement,
    verify_creator,
    verify_revenue,
)
from tlog.note import SigningKey, format_vkey, parse_vkey

pytestmark = pytest.mark.anyio

ORIGIN = "test.example/catalog"
ALICE = SigningKey("acct:alice", b"\x21" * 32)
BOB = SigningKey("acct:bob", b"\x22" * 32)
BILLING = SigningKey("billing.test", b"\x23" * 32)
STRANGER = SigningKey("billing.test", b"\x24" * 32)
CONTENT = "sha256:" + "c1" * 32
M1, M2 = "sha256:" + "a1" * 32, "sha256:" + "a2" * 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Log(LogUnderTest):
    async def creator(self, key: SigningKey, currency: str = "USD") -> httpx.Response:
        body = {"creator_id": key.name, "key": format_vkey(key.verifier()), "currency": currency}
        return await self.client.post("/v1/admin/creators", json=body, headers=self.admin)

    async def send(self, path: str, entry: Any) -> httpx.Response:
        return await self.client.post(path, content=encode_entry(entry))


@pytest.fixture
async def log(storage_url: str, tmp_path: Path) -> AsyncIterator[Log]:
    keys = tmp_path / "billing.keys"
    keys.write_text(f"# the billing key\n{format_vkey(BILLING.verifier())}\n")
    config = Config(
        data_dir=tmp_path / "data", origin=ORIGIN, db=storage_url, pool_interval_s=0.01,
        checkpoint_interval_s=3600, billing_keys=keys,
    )  # fmt: skip
    app = create_app(config)
    async with started(app) as client:
        yield Log(client, config.data_dir)


def manifest(key: SigningKey = ALICE, **changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "action": "publish", "creator_id": key.name, "content_id": CONTENT, "version": 1,
        "manifest": M1, "scopes": ("training",), "terms": (("training", "0.05"),),
        "license": "https://market.test/l/1",
    }  # fmt: skip
    fields.update(changes)
    return sign_manifest(Manifest(**fields), key)


def statement(key: SigningKey = BILLING, **changes: Any) -> Statement:
    fields: dict[str, Any] = {
        "digest": "sha256:" + "d1" * 32, "creator_id": ALICE.name, "currency": "USD",
        "range_start": 0, "range_end": 2, "period_end_ms": 1_700_000_000_000, "lines": 2,
        "paid_minor": 100, "carry_minor": 0, "reserve_minor": 10,
        "reserve_release_ms": 1_702_000_000_000,
    }  # fmt: skip
    fields.update(changes)
    return sign_statement(Statement(**fields), key)


async def test_creators_are_registered_by_the_operator(log: Log) -> None:
    answer = await log.creator(ALICE)
    assert answer.status_code == 200, answer.text
    entry = decode_entry(parse_bundle(answer.json()["bundle"].encode()).extra or b"")
    operator = parse_vkey((log.data_dir / "operator.vkey").read_text().strip())
    verify_creator(entry, operator)  # type: ignore[arg-type]
    assert (await log.creator(ALICE)).status_code == 409  # changes nothing
    assert (await log.creator(ALICE, "EUR")).status_code == 200  # a new currency
    creators = (await log.client.get("/v1/creators")).json()["creators"]
    assert [(c["creator_id"], c["currency"], c["entry_index"]) for c in creators] == [
        (ALICE.name, "EUR", 1)
    ]
    assert (await log.client.get(f"/v1/creators/{ALICE.name}")).json()["currency"] == "EUR"
    assert (await log.client.get("/v1/creators/acct:nobody")).status_code == 404
    refused = await log.client.post("/v1/admin/creators", json={"creator_id": "x"})
    assert refused.status_code == 401


async def test_manifests_are_signed_by_the_registered_creator(log: Log) -> None:
    assert (await log.send("/v1/manifests", manifest())).json()["error"]["field"] == (
        "manifest.creator_id"
    )  # not registered yet: 409
    await log.creator(ALICE)
    await log.creator(BOB)
    before = await log.size()
    impostor = dataclasses.replace(manifest(), signature=manifest(BOB).signature)
    answer = await log.send("/v1/manifests", impostor)
    assert answer.status_code == 403 and answer.json()["error"]["field"] == "manifest.signature"
    assert await log.size() == before
    first = await log.send("/v1/manifests", manifest())
    assert first.status_code == 200 and first.json()["status"] == "logged"
    again = await log.send("/v1/manifests", manifest())
    assert again.json()["status"] == "duplicate" and again.json()["index"] == first.json()["index"]
    cases = [
        (manifest(BOB, manifest=M2, version=2), 409, "manifest.content_id"),  # Alice's content
        (manifest(manifest=M2, version=1), 409, "manifest.version"),
        (manifest(version=2), 409, "manifest.manifest"),  # a digest is published once
    ]
    for entry, status, field in cases:
        answer = await log.send("/v1/manifests", entry)
        assert (answer.status_code, answer.json()["error"]["field"]) == (status, field)
    assert (await log.send("/v1/manifests", manifest(manifest=M2, version=2))).status_code == 200
    withdraw = manifest(action="withdraw", scopes=(), terms=(), license=None)
    assert (await log.send("/v1/manifests", withdraw)).status_code == 200
    assert (await log.send("/v1/manifests", withdraw)).json()["status"] == "duplicate"
    catalog = (await log.client.get("/v1/catalog", params={"creator": ALICE.name})).json()
    assert [(m["version"], m["withdrawn_index"] is not None) for m in catalog["manifests"]] == [
        (1, True), (2, False),
    ]  # fmt: skip
    content = (await log.client.get("/v1/catalog", params={"content": CONTENT})).json()
    assert len(content["manifests"]) == 2 and content["next_after"] is None


async def test_bad_submissions_name_the_field_and_store_nothing(log: Log) -> None:
    await log.creator(ALICE)
    before = await log.size()
    logged = json.loads(encode_entry(manifest(), logged_at_ms=5))
    cases = [
        ("/v1/manifests", b"{", 400, "body"),
        ("/v1/manifests", b"[1]", 400, "entry"),
        ("/v1/manifests", encode_entry(statement()), 400, "manifest.kind"),
        ("/v1/manifests", json.dumps(logged).encode(), 400, "manifest.logged_at_ms"),
        ("/v1/manifests", b'{"kind": "manifest", "version": 1.5}', 400, "body"),
        ("/v1/disputes", encode_entry(manifest()), 400, "dispute.kind"),
        ("/v1/statements", encode_entry(statement(STRANGER)), 403, "request"),
    ]
    for path, body, status, field in cases:
        answer = await log.client.post(path, content=body)
        assert (answer.status_code, answer.json()["error"]["field"]) == (status, field), body
    admin = [
        ({"creator_id": ALICE.name}, "creator.key"),
        ({"creator_id": ALICE.name, "key": "k", "currency": "USD", "x": 1}, "creator.x"),
        ({"creator_id": 5, "key": "k", "currency": "USD"}, "creator.creator_id"),
        ({"creator_id": "a b", "key": format_vkey(ALICE.verifier()), "currency": "USD"},
         "creator.creator_id"),
    ]  # fmt: skip
    for body, field in admin:
        answer = await log.client.post("/v1/admin/creators", json=body, headers=log.admin)
        assert (answer.status_code, answer.json()["error"]["field"]) == (400, field)
    revenue = {"consumer_id": "acme", "currency": "USD", "amount_minor": 1.5}
    answer = await log.client.post("/v1/admin/revenue", json=revenue, headers=log.admin)
    assert answer.status_code == 400
    assert await log.size() == before


async def test_statements_chain_per_currency(log: Log) -> None:
    await log.creator(ALICE)
    await log.creator(BOB)

    async def send(*entries: Statement) -> httpx.Response:
        body = b"\n".join(encode_entry(e) for e in entries)
        return await log.client.post(
            "/v1/statements", content=body, headers={"Content-Type": "application/jsonl"}
        )

    def fields(answer: httpx.Response) -> list[str | None]:
        return [r.get("error", {}).get("field") for r in answer.json()["results"]]

    late = statement(range_start=1)
    assert fields(await send(late)) == ["statement.range_start"]  # the first run starts at 0
    beyond = statement(range_end=99)
    assert fields(await send(beyond)) == ["statement.range_end"]  # not committed
    forged = dataclasses.replace(statement(), paid_minor=10**6)
    assert (await send(forged)).status_code == 403
    first = statement()
    bob_first = statement(creator_id=BOB.name, digest="sha256:" + "b1" * 32)
    answer = await send(first, bob_first)
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["logged", "logged"]
    assert [r["status"] for r in (await send(first)).json()["results"]] == ["duplicate"]
    size = await log.size()
    cases = [
        (statement(digest="sha256:" + "d2" * 32), "statement.creator_id"),  # one per run
        (statement(digest="sha256:" + "d3" * 32, range_start=1, range_end=size),
         "statement.range_start"),
        (statement(digest="sha256:" + "d4" * 32, range_start=2, range_end=size),
         "statement.previous"),
        (statement(digest="sha256:" + "d5" * 32, range_start=2, range_end=size,
                   previous=first.digest, period_end_ms=1), "statement.period_end_ms"),
        (statement(digest="sha256:" + "d6" * 32, range_start=2, range_end=size,
                   previous=first.digest, released=("sha256:" + "b1" * 32,)),
         "statement.released"),
    ]  # fmt: skip
    for entry, field in cases:
        assert fields(await send(entry)) == [field]
    euro = statement(currency="EUR", digest="sha256:" + "e1" * 32)
    assert fields(await send(euro)) == [None]  # another currency: its own chain from 0
    second = statement(
        digest="sha256:" + "d7" * 32, range_start=2, range_end=size, previous=first.digest,
        released=(first.digest,),
    )  # fmt: skip
    assert fields(await send(second)) == [None]
    listed = (await log.client.get("/v1/statements", params={"currency": "USD"})).json()
    assert [s["digest"] for s in listed["statements"]] == [
        first.digest, bob_first.digest, second.digest,
    ]  # fmt: skip
    latest = await log.client.get(
        "/v1/statements", params={"currency": "USD", "latest": "1", "limit": "1"}
    )
    assert latest.json()["statements"][0]["digest"] == second.digest
    one = (await log.client.get(f"/v1/statements/{first.digest}")).json()
    assert one["released_by"] == second.digest and one["range_end"] == 2
    assert (await log.client.get("/v1/statements/sha256:00")).status_code == 404
    keys = (await log.client.get("/v1/billing-keys")).json()["billing_keys"]
    assert keys == [format_vkey(BILLING.verifier())]


async def test_disputes_open_and_close(log: Log) -> None:
    await log.creator(ALICE)
    await log.creator(BOB)
    entry = statement()
    await log.client.post("/v1/statements", content=encode_entry(entry))

    def dispute(key: SigningKey = ALICE, **changes: Any) -> Dispute:
        fields: dict[str, Any] = {
            "action": "open", "creator_id": key.name, "statement": entry.digest, "line": 2,
            "reason": "too low",
        }  # fmt: skip
        fields.update(changes)
        return sign_dispute(Dispute(**fields), key)

    cases = [
        (dispute(line=3), 409, "dispute.line"),
        (dispute(BOB), 409, "dispute.statement"),  # not Bob's statement
        (dispute(statement="sha256:" + "00" * 32), 409, "dispute.statement"),
        (dataclasses.replace(dispute(), reason="other"), 403, "dispute.signature"),
        (dispute(action="close", follows=1), 409, "dispute.line"),  # nothing open
        (dispute(follows=1), 409, "dispute.follows"),  # the line has no close to follow
    ]
    resolve = {"creator_id": ALICE.name, "statement": entry.digest, "line": 2, "reason": "ok"}
    nothing = await log.client.post("/v1/admin/disputes", json=resolve, headers=log.admin)
    assert (nothing.status_code, nothing.json()["error"]["field"]) == (409, "dispute.line")
    for found, status, field in cases:
        answer = await log.send("/v1/disputes", found)
        assert (answer.status_code, answer.json()["error"]["field"]) == (status, field)
    opened = await log.send("/v1/disputes", dispute())
    assert opened.status_code == 200
    assert (await log.send("/v1/disputes", dispute(reason="again"))).status_code == 409
    listed = await log.client.get("/v1/disputes", params={"creator": ALICE.name, "open": "1"})
    assert [(d["line"], d["closed_index"]) for d in listed.json()["disputes"]] == [(2, None)]
    answer = await log.client.post("/v1/admin/disputes", json=resolve, headers=log.admin)
    assert answer.status_code == 200, answer.text
    closed = decode_entry(parse_bundle(answer.json()["bundle"].encode()).extra or b"")
    assert isinstance(closed, Dispute) and closed.follows == opened.json()["index"]
    listed = (await log.client.get("/v1/disputes", params={"creator": ALICE.name})).json()
    assert listed["disputes"][0]["closed_index"] == answer.json()["index"]
    # Resolved again with the same reason: the same entry, answered duplicate; another
    # reason would close a line that is not open.
    again = await log.client.post("/v1/admin/disputes", json=resolve, headers=log.admin)
    assert (again.json()["status"], again.json()["index"]) == ("duplicate", answer.json()["index"])
    other = {**resolve, "reason": "again"}
    refused = await log.client.post("/v1/admin/disputes", json=other, headers=log.admin)
    assert (refused.status_code, refused.json()["error"]["field"]) == (409, "dispute.line")
    operator_signed = dispute(action="close", by="operator", follows=opened.json()["index"])
    assert (await log.send("/v1/disputes", operator_signed)).status_code == 400


async def test_revenue_is_declared_once_per_reference(log: Log) -> None:
    body = {"consumer_id": "acme-ai", "currency": "USD", "amount_minor": 100_000,
            "period_start_ms": 0, "period_end_ms": 1000, "reference": "inv-1"}  # fmt: skip
    answer = await log.client.post("/v1/admin/revenue", json=body, headers=log.admin)
    assert answer.status_code == 200
    entry = decode_entry(parse_bundle(answer.json()["bundle"].encode()).extra or b"")
    verify_revenue(entry, parse_vkey((log.data_dir / "operator.vkey").read_text().strip()))  # type: ignore[arg-type]
    again = await log.client.post("/v1/admin/revenue", json=body, headers=log.admin)
    assert again.json()["status"] == "duplicate"
    changed = await log.client.post(
        "/v1/admin/revenue", json={**body, "amount_minor": 5}, headers=log.admin
    )
    assert changed.status_code == 409 and changed.json()["error"]["field"] == "revenue.reference"
    listed = (await log.client.get("/v1/revenue", params={"consumer": "acme-ai"})).json()
    assert [r["amount_minor"] for r in listed["revenue"]] == [100_000]
    assert (await log.client.get("/v1/revenue")).status_code == 400


async def test_a_log_without_billing_keys_takes_no_statements(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", origin=ORIGIN, pool_interval_s=0.01)
    app = create_app(config)
    async with started(app) as client:
        answer = await client.post("/v1/statements", content=encode_entry(statement()))
        assert answer.status_code == 403
        assert (await client.get("/v1/billing-keys")).json() == {"billing_keys": []}


# -- nothing signed can be replayed ------------------------------------------------------------


def repost_of(logged_entry: dict[str, Any]) -> bytes:
    """An entry as /v1/entries serves it, made submittable again: without the log's time."""
    obj = json.loads(logged_entry["entry"])
    del obj["logged_at_ms"]
    return canonical_json(obj)


async def entry_json(log: Log, index: int) -> dict[str, Any]:
    page = await log.client.get("/v1/entries", params={"start": index, "end": index + 1})
    found: dict[str, Any] = page.json()["entries"][0]
    return found


async def logged_statement(log: Log) -> Statement:
    """Alice's statement (of lines 1 and 2), over the log's first two entries."""
    await log.creator(ALICE)
    await log.creator(BOB)
    entry = statement()
    assert (await log.client.post("/v1/statements", content=encode_entry(entry))).is_success
    return entry


def alice_dispute(
    entry: Statement, action: str, follows: int | None, line: int = 2, reason: str = "too low"
) -> Dispute:
    found = Dispute(action, ALICE.name, entry.digest, line, reason, follows=follows)
    return sign_dispute(found, ALICE)


async def test_an_old_open_copied_from_the_log_cannot_reopen_a_resolved_dispute(log: Log) -> None:
    """The attack: anyone copies the creator's open out of /v1/entries after the operator
    resolved it, and posts it again; and once more after the creator opened the line again
    and the operator resolved that too. Each time: ``duplicate`` with its index, nothing
    appended, the line stays closed."""
    entry = await logged_statement(log)
    opened = (await log.send("/v1/disputes", alice_dispute(entry, "open", None))).json()["index"]
    resolve = {"creator_id": ALICE.name, "statement": entry.digest, "line": 2, "reason": "ok"}
    closed = await log.client.post("/v1/admin/disputes", json=resolve, headers=log.admin)
    reopened = await log.send("/v1/disputes", alice_dispute(entry, "open", closed.json()["index"]))
    assert reopened.status_code == 200, reopened.text
    resolve["reason"] = "ok again"
    assert (await log.client.post("/v1/admin/disputes", json=resolve, headers=log.admin)).is_success
    size = await log.size()
    for index in (opened, reopened.json()["index"]):
        copied = repost_of(await entry_json(log, index))
        answer = await log.client.post("/v1/disputes", content=copied)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["index"]) == ("duplicate", index)
        assert parse_bundle(answer.json()["bundle"].encode()).index == index
    assert await log.size() == size
    listed = (await log.client.get("/v1/disputes", params={"statement": entry.digest})).json()
    assert [d["closed_index"] is not None for d in listed["disputes"]] == [True, True]


async def test_a_dispute_must_follow_the_lines_latest_entry(log: Log) -> None:
    """An open names the line's latest close (nothing the first time); a close names the open
    it closes. Anything else is refused, 409 naming dispute.follows, and stores nothing."""
    entry = await logged_statement(log)
    size = await log.size()
    for stale in (alice_dispute(entry, "open", 0), alice_dispute(entry, "open", size)):
        answer = await log.send("/v1/disputes", stale)
        assert (answer.status_code, answer.json()["error"]["field"]) == (409, "dispute.follows")
    opened = (await log.send("/v1/disputes", alice_dispute(entry, "open", None))).json()["index"]
    answer = await log.send("/v1/disputes", alice_dispute(entry, "close", opened - 1))
    assert (answer.status_code, answer.json()["error"]["field"]) == (409, "dispute.follows")
    assert "the open dispute is at index" in answer.json()["error"]["reason"]
    withdrawn = await log.send("/v1/disputes", alice_dispute(entry, "close", opened))
    assert withdrawn.json()["status"] == "logged"
    size = await log.size()
    for stale in (None, opened, withdrawn.json()["index"] + 1):
        answer = await log.send("/v1/disputes", alice_dispute(entry, "open", stale, reason="2"))
        assert (answer.status_code, answer.json()["error"]["field"]) == (409, "dispute.follows")
    answer = await log.send("/v1/disputes", alice_dispute(entry, "close", opened, line=1))
    assert (answer.status_code, answer.json()["error"]["field"]) == (409, "dispute.line")
    assert await log.size() == size
    again = await log.send("/v1/disputes", alice_dispute(entry, "open", withdrawn.json()["index"]))
    assert again.json()["status"] == "logged"


async def test_every_signed_kind_sent_again_is_a_duplicate_at_its_index(log: Log) -> None:
    """A creator-signed manifest, its withdrawal, a statement and a dispute copied from
    /v1/entries and posted again; the operator's edge-key, revenue and resolve requests sent
    again: each is ``duplicate`` with its index, and the log does not grow."""
    entry = await logged_statement(log)
    edge = SigningKey("edge-1", b"\x25" * 32)
    admin_requests = [
        ("/v1/admin/edge-keys",
         {"action": "register", "edge": edge.name, "key": format_vkey(edge.verifier()),
          "valid_from_ms": 0}),
        ("/v1/admin/revenue",
         {"consumer_id": "acme", "currency": "USD", "amount_minor": 5, "period_start_ms": 0,
          "period_end_ms": 1000, "reference": "inv-1"}),
    ]  # fmt: skip
    indexes: list[int] = []
    public: list[int] = []
    for path, sent in (
        ("/v1/manifests", manifest()),
        ("/v1/manifests", manifest(action="withdraw", scopes=(), terms=(), license=None)),
        ("/v1/disputes", alice_dispute(entry, "open", None)),
    ):
        answer = await log.send(path, sent)
        assert answer.json()["status"] == "logged", answer.text
        public.append(answer.json()["index"])
    for path, body in admin_requests:
        answer = await log.client.post(path, json=body, headers=log.admin)
        assert answer.json()["status"] == "logged", answer.text
        indexes.append(answer.json()["index"])
    resolve = {"creator_id": ALICE.name, "statement": entry.digest, "line": 2, "reason": "ok"}
    resolved = await log.client.post("/v1/admin/disputes", json=resolve, headers=log.admin)
    indexes.append(resolved.json()["index"])
    admin_requests.append(("/v1/admin/disputes", resolve))
    size = await log.size()
    statement_index = (await log.client.get(f"/v1/statements/{entry.digest}")).json()
    copies = [("/v1/statements", statement_index["entry_index"])]
    copies += list(zip(("/v1/manifests", "/v1/manifests", "/v1/disputes"), public, strict=True))
    for path, index in copies:
        answer = await log.client.post(path, content=repost_of(await entry_json(log, index)))
        assert answer.status_code == 200, answer.text
        found = answer.json()["results"][0] if path == "/v1/statements" else answer.json()
        assert (answer.status_code, found["status"], found["index"]) == (200, "duplicate", index)
    for (path, body), index in zip(admin_requests, indexes, strict=True):
        answer = await log.client.post(path, json=body, headers=log.admin)
        assert (answer.json()["status"], answer.json()["index"]) == ("duplicate", index), path
    assert await log.size() == size


async def test_the_admin_route_registers_a_creator_following_its_registration(log: Log) -> None:
    """USD, EUR, then USD again: the server signs each change following the registration in
    force, so the third is a new entry, not the first one's duplicate; a body that names a
    registration not in force is refused."""
    first = (await log.creator(ALICE)).json()["index"]
    second = (await log.creator(ALICE, "EUR")).json()["index"]
    body = {"creator_id": ALICE.name, "key": format_vkey(ALICE.verifier()), "currency": "USD"}
    stale = await log.client.post(
        "/v1/admin/creators", json={**body, "follows": first}, headers=log.admin
    )
    assert (stale.status_code, stale.json()["error"]["field"]) == (409, "creator.follows")
    third = await log.creator(ALICE, "USD")
    assert third.json()["status"] == "logged" and third.json()["index"] > second
    entry = decode_entry(parse_bundle(third.json()["bundle"].encode()).extra or b"")
    assert isinstance(entry, Creator) and entry.follows == second
    assert (await log.client.get(f"/v1/creators/{ALICE.name}")).json()["currency"] == "USD"
