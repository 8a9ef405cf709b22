"""The log's HTTP API in process (httpx over ASGI, with the app's own lifespan), on SQLite and
PostgreSQL: submission answers with verifiable bundles, the read API, and a table of
malformed or hostile requests that must each get their documented status, name the problem,
and leave the log unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from log_server.app import create_app
from log_server.config import Config
from log_server.openapi import OPENAPI
from tests.log_server.conftest import LogUnderTest, started
from tlog.bundle import parse_bundle, verify_bundle
from tlog.checkpoint import open_checkpoint
from tlog.entry import Receipt, decode_entry, encode_entry, sign_receipt
from tlog.errors import MalformedError
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, Verifier, format_vkey, parse_vkey
from tlog.parsing import decode_b64, encode_b64
from tlog.proofs import verify_consistency
from tlog.tiles import ENTRIES, Tile, decode_entry_bundle, tile_hash_indexes

pytestmark = pytest.mark.anyio

ORIGIN = "test.example/log"
EMPTY_ROOT_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
EDGE = SigningKey("edge-1", b"\x33" * 32)
OTHER_EDGE = SigningKey("edge-2", b"\x44" * 32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Log(LogUnderTest):
    @property
    def key(self) -> Verifier:
        return parse_vkey((self.data_dir / "log.vkey").read_text().strip())

    async def register(self, key: SigningKey, **extra: Any) -> httpx.Response:
        body = {"action": "register", "edge": key.name, "key": format_vkey(key.verifier())}
        body["valid_from_ms"] = 0
        body.update(extra)
        return await self.client.post("/v1/admin/edge-keys", json=body, headers=self.admin)

    async def submit(self, *receipts: Receipt) -> httpx.Response:
        body = "\n".join(encode_entry(r).decode() for r in receipts)
        return await self.client.post(
            "/v1/receipts", content=body, headers={"Content-Type": "application/jsonl"}
        )

    async def snapshot(self) -> tuple[Any, Any, Any]:
        """What a bad request must not change: size, checkpoints, registry."""
        health = (await self.client.get("/healthz")).json()
        history = (await self.client.get("/v1/checkpoints?limit=1000")).json()
        registry = (await self.client.get("/v1/edge-keys")).json()
        return health["tree_size"], len(history["checkpoints"]), registry


@pytest.fixture
async def log(storage_url: str, tmp_path: Path) -> AsyncIterator[Log]:
    config = Config(
        data_dir=tmp_path / "data",
        origin=ORIGIN,
        db=storage_url,
        pool_interval_s=0.01,
        checkpoint_interval_s=3600,
        max_batch_receipts=64,
        max_body_bytes=1 << 20,
    )
    app = create_app(config)
    async with started(app) as client:
        yield Log(client, config.data_dir)


def receipt(i: int, key: SigningKey = EDGE, **changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "request_id": f"req-{i}",
        "edge": key.name,
        "consumer_id": "acme-ai",
        "token_id": "tok-1",
        "job_id": f"job-{i % 2}",
        "scope": "training",
        "content_id": f"sha256:{i:064x}",
        "creator_id": "acct:alice",
        "manifest": "sha256:" + "ab" * 32,
        "bytes_sent": 100 + i,
        "cache": "hit",
        "served_at_ms": time.time_ns() // 1_000_000,
    }
    fields.update(changes)
    return sign_receipt(Receipt(**fields), key)


async def test_submitted_receipts_come_back_with_bundles_that_verify(log: Log) -> None:
    assert (await log.register(EDGE)).status_code == 200
    receipts = [receipt(i) for i in range(5)]
    response = await log.submit(*receipts)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["logged"] * 5
    assert [r["index"] for r in results] == [1, 2, 3, 4, 5]  # entry 0 is the registration
    for sent, result in zip(receipts, results, strict=True):
        verified = verify_bundle(parse_bundle(result["bundle"].encode()), [log.key])
        got = decode_entry(verified.entry)
        assert isinstance(got, Receipt)
        assert got.logged_at_ms is not None
        assert dataclasses.replace(got, logged_at_ms=None) == sent


async def test_resubmission_is_a_duplicate_at_the_same_index(log: Log) -> None:
    await log.register(EDGE)
    one, two = receipt(1), receipt(2)
    first = (await log.submit(one, two)).json()["results"]
    again = (await log.submit(two, one)).json()["results"]
    assert [r["status"] for r in again] == ["duplicate", "duplicate"]
    assert [r["index"] for r in again] == [first[1]["index"], first[0]["index"]]
    for result in again:
        verify_bundle(parse_bundle(result["bundle"].encode()), [log.key])


async def test_a_replayed_request_id_with_other_content_is_a_conflict(log: Log) -> None:
    await log.register(EDGE)
    await log.submit(receipt(1, served_at_ms=NOW_MS))
    before = await log.snapshot()
    response = await log.submit(receipt(1, served_at_ms=NOW_MS, bytes_sent=999_999))
    assert response.status_code == 422
    (result,) = response.json()["results"]
    assert result["status"] == "conflict"
    assert result["error"]["field"] == "receipt.request_id"
    size, _, registry = await log.snapshot()
    assert (size, registry) == (before[0], before[2])


async def test_checkpoint_tiles_and_proofs_agree(log: Log) -> None:
    await log.register(EDGE)
    sizes = []
    for batch in range(3):
        await log.submit(*(receipt(batch * 10 + i) for i in range(7)))
        note = (await log.client.get("/checkpoint")).content
        sizes.append(open_checkpoint(note, [log.key], origin=ORIGIN).checkpoint)
    latest = sizes[-1]
    entries = (await log.client.get(f"/v1/entries?start=0&end={latest.tree_size}")).json()
    store = MemoryHashStore()
    store.append([leaf_hash(e["entry"].encode()) for e in entries["entries"]])
    assert root_hash(latest.tree_size, store) == latest.root_hash
    partial = Tile(0, 0, latest.tree_size)
    tile = await log.client.get(f"/{partial.path()}")
    assert tile.status_code == 200
    assert tile.content == b"".join(store.read_hashes(tile_hash_indexes(partial)))
    assert "immutable" not in tile.headers["cache-control"]
    bundle = await log.client.get(f"/{Tile(ENTRIES, 0, latest.tree_size).path()}")
    assert decode_entry_bundle(bundle.content) == [e["entry"].encode() for e in entries["entries"]]
    old = sizes[0]
    query = f"old_size={old.tree_size}&new_size={latest.tree_size}"
    proof = (await log.client.get(f"/v1/proofs/consistency?{query}")).json()["proof"]
    hashes = [decode_b64(p, "proof") for p in proof]
    verify_consistency(old.tree_size, latest.tree_size, hashes, old.root_hash, latest.root_hash)


async def test_inclusion_by_leaf_hash_names_the_index(log: Log) -> None:
    await log.register(EDGE)
    results = (await log.submit(*(receipt(i) for i in range(4)))).json()["results"]
    bundle = parse_bundle(results[2]["bundle"].encode())
    assert bundle.extra is not None
    leaf = encode_b64(leaf_hash(bundle.extra))
    response = await log.client.get("/v1/proofs/inclusion", params={"leaf_hash": leaf})
    assert response.status_code == 200
    assert response.json()["index"] == results[2]["index"]
    assert [decode_b64(h, "proof") for h in response.json()["proof"]] == list(bundle.proof)
    unknown = encode_b64(leaf_hash(b"never logged"))
    response = await log.client.get("/v1/proofs/inclusion", params={"leaf_hash": unknown})
    assert response.status_code == 404
    both = {"leaf_hash": leaf, "index": "1"}
    assert (await log.client.get("/v1/proofs/inclusion", params=both)).status_code == 400


async def test_find_receipts_pages_with_bundles(log: Log) -> None:
    await log.register(EDGE)
    await log.submit(*(receipt(i) for i in range(6)))
    page = (await log.client.get("/v1/receipts?job=job-0&limit=2")).json()
    assert len(page["receipts"]) == 2
    rest = (await log.client.get(f"/v1/receipts?job=job-0&after={page['next_after']}")).json()
    indexes = [r["index"] for r in page["receipts"] + rest["receipts"]]
    assert len(indexes) == 3
    assert indexes == sorted(indexes)
    assert rest["next_after"] is None
    for r in page["receipts"] + rest["receipts"]:
        verify_bundle(parse_bundle(r["bundle"].encode()), [log.key])


async def test_find_receipts_by_request_id_from_any_edge(log: Log) -> None:
    await log.register(EDGE)
    await log.register(OTHER_EDGE)
    await log.submit(receipt(1), receipt(2), receipt(1, key=OTHER_EDGE))
    found = (await log.client.get("/v1/receipts?request=req-1")).json()
    entries = [parse_bundle(r["bundle"].encode()) for r in found["receipts"]]
    edges = [getattr(decode_entry(b.extra or b""), "edge", None) for b in entries]
    assert sorted(edges) == sorted([EDGE.name, OTHER_EDGE.name])
    assert [r["index"] for r in found["receipts"]] == sorted(r["index"] for r in found["receipts"])
    for bundle in entries:
        verify_bundle(bundle, [log.key])
    assert (await log.client.get("/v1/receipts?request=req-9")).json()["receipts"] == []


async def test_checkpoints_newest_first_and_the_growth_samples(log: Log) -> None:
    await log.register(EDGE)
    for i in range(5):
        assert (await log.submit(receipt(i))).status_code == 200
    oldest_first = (await log.client.get("/v1/checkpoints?limit=1000")).json()["checkpoints"]
    assert len(oldest_first) >= 6
    newest = (await log.client.get("/v1/checkpoints?order=desc&limit=2")).json()["checkpoints"]
    assert newest == oldest_first[::-1][:2]
    before = newest[-1]["id"]
    page = await log.client.get(f"/v1/checkpoints?order=desc&before={before}&limit=2")
    assert page.json()["checkpoints"] == oldest_first[::-1][2:4]

    growth = (await log.client.get("/v1/growth?points=3")).json()["points"]
    assert growth[0]["id"] == oldest_first[0]["id"]
    assert growth[-1]["tree_size"] == oldest_first[-1]["tree_size"] == 6
    assert 2 <= len(growth) <= 3
    everything = (await log.client.get("/v1/growth?points=1000")).json()["points"]
    assert everything == [
        {"id": c["id"], "tree_size": c["tree_size"], "signed_at_ms": c["signed_at_ms"]}
        for c in oldest_first
    ]


async def test_the_log_states_its_key_and_witnesses(log: Log) -> None:
    about = (await log.client.get("/v1/log")).json()
    assert about == {
        "origin": ORIGIN,
        "log_key": format_vkey(log.key),
        "witnesses": [],
        "quorum": None,
        "witness_refusals": 0,
    }


async def test_revoked_key_stops_receipts_served_after_it(log: Log) -> None:
    await log.register(EDGE)
    now = time.time_ns() // 1_000_000
    revoke = {"action": "revoke", "valid_until_ms": now - 60_000}
    response = await log.register(EDGE, **revoke)
    assert response.status_code == 200
    late = await log.submit(receipt(1, served_at_ms=now))
    assert late.status_code == 422
    assert late.json()["results"][0]["error"]["field"] == "receipt.key_id"
    early = await log.submit(receipt(2, served_at_ms=now - 120_000))
    assert early.json()["results"][0]["status"] == "logged"


async def test_openapi_lists_exactly_the_routes(log: Log) -> None:
    document = (await log.client.get("/openapi.json")).json()
    assert document == json.loads(json.dumps(OPENAPI))
    app_paths = {"/checkpoint", "/tile/{path}", "/v1/receipts", "/v1/receipts/{edge}/{request_id}"}
    assert app_paths <= set(document["paths"])


async def test_metrics_count_outcomes(log: Log) -> None:
    await log.register(EDGE)
    await log.submit(receipt(1), receipt(1, key=OTHER_EDGE))
    text = (await log.client.get("/metrics")).text
    assert 'meterlog_submissions_total{outcome="logged"} 1.0' in text
    assert 'meterlog_submissions_total{outcome="rejected"} 1.0' in text
    assert "meterlog_tree_size 2.0" in text


# -- the bad-input table ------------------------------------------------------------------

NOW_MS = time.time_ns() // 1_000_000
GOOD = encode_entry(receipt(900)).decode()


def _line(**changes: Any) -> str:
    obj = json.loads(GOOD)
    for name, value in changes.items():
        if value is None:
            obj.pop(name)
        else:
            obj[name] = value
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Bad:
    """A bad request, the status it must get, and words its answer must contain."""

    case: str
    method: str
    path: str
    body: bytes | str
    status: int
    names: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


JSON = {"Content-Type": "application/json"}
VKEY = format_vkey(EDGE.verifier())


def post(case: str, body: bytes | str, status: int, names: str, **headers: str) -> Bad:
    return Bad(case, "POST", "/v1/receipts", body, status, names, headers or JSON)


def line(case: str, body: str, status: int, names: str) -> Bad:
    return Bad(case, "POST", "/v1/receipts", body, status, names, {})


def get(case: str, path: str, status: int, names: str) -> Bad:
    return Bad(case, "GET", path, "", status, names)


def admin(case: str, status: int, **headers: str) -> Bad:
    return Bad(case, "POST", "/v1/admin/edge-keys", "{}", status, "token", headers)


BAD_REQUESTS = [
    post("not json", "[nope", 400, "body"),
    post("truncated array", "[", 400, "body"),
    post("empty body", "", 400, "body"),
    post("empty array", "[]", 400, "body"),
    post("float", "[1.5]", 400, "body"),
    post("NaN", "[NaN]", 400, "body"),
    post("not UTF-8", b"\xff\xfe[", 400, "body"),
    post("too many", "[" + ",".join(["{}"] * 65) + "]", 413, "limit"),
    post("too big", "[" + " " * (1 << 20) + "]", 413, "limit"),
    post("not an object", "[5]", 422, "entry"),
    line("wrong type", _line(bytes_sent="12"), 422, "receipt.bytes_sent"),
    line("bool for int", _line(bytes_sent=True), 422, "receipt.bytes_sent"),
    line("missing field", _line(scope=None), 422, "receipt.scope"),
    line("unknown field", _line(extra="x"), 422, "receipt.extra"),
    line("float in receipt", _line(bytes_sent=1.5), 422, "entry.bytes_sent"),
    line("huge integer", _line(bytes_sent=2**60), 422, "entry.bytes_sent"),
    line("negative integer", _line(bytes_sent=-1), 422, "receipt.bytes_sent"),
    line("not canonical", GOOD.replace(",", ", ", 1), 422, "entry"),
    line("bad scope", _line(scope="everything"), 422, "receipt.scope"),
    line("bad signature", _line(bytes_sent=101), 422, "receipt.signature"),
    line("unknown key", encode_entry(receipt(901, key=OTHER_EDGE)).decode(), 422, "receipt.key_id"),
    line(
        "from the future",
        encode_entry(receipt(902, served_at_ms=NOW_MS + 3_600_000)).decode(),
        422,
        "receipt.served_at_ms",
    ),
    line("too old", encode_entry(receipt(903, served_at_ms=1)).decode(), 422, "served_at_ms"),
    line(
        "logged_at_ms set",
        encode_entry(dataclasses.replace(receipt(904), logged_at_ms=5)).decode(),
        422,
        "receipt.logged_at_ms",
    ),
    get("bad tile path", "/tile/0/01", 400, "tile"),
    get("tile level 64", "/tile/64/000", 400, "tile.level"),
    get("tile width 0", "/tile/entries/000.p/0", 400, "tile.width"),
    get("tile past the tree", "/tile/0/005", 404, "not in the tree"),
    get("index >= size", "/v1/proofs/inclusion?index=50&tree_size=1", 400, "index"),
    get("missing index", "/v1/proofs/inclusion", 400, "index"),
    get("negative index", "/v1/proofs/inclusion?index=-1", 400, "index"),
    get("non-numeric index", "/v1/proofs/inclusion?index=abc", 400, "index"),
    get("leading zero", "/v1/proofs/inclusion?index=01", 400, "index"),
    get("old > new", "/v1/proofs/consistency?old_size=3&new_size=1", 400, "old_size"),
    get("new > size", "/v1/proofs/consistency?old_size=1&new_size=999", 400, "new_size"),
    get("entries backwards", "/v1/entries?start=5&end=2", 400, "end"),
    get("entries page too big", "/v1/entries?start=0&end=100000", 400, "end"),
    get("two finders", "/v1/receipts?consumer=a&job=b", 400, "query"),
    get("request and job", "/v1/receipts?request=a&job=b", 400, "query"),
    get("order sideways", "/v1/checkpoints?order=up", 400, "order"),
    get("before, oldest first", "/v1/checkpoints?before=3", 400, "before"),
    get("after, newest first", "/v1/checkpoints?order=desc&after=1", 400, "after"),
    get("growth of one point", "/v1/growth?points=1", 400, "points"),
    get("growth too fine", "/v1/growth?points=1001", 400, "points"),
    get("limit 0", "/v1/receipts?consumer=a&limit=0", 400, "limit"),
    get("unknown receipt", "/v1/receipts/edge-1/nope", 404, "no receipt"),
    admin("no token", 401),
    admin("wrong token", 401, Authorization="Bearer wrong"),
    admin("basic auth", 401, Authorization="Basic eDp5"),
]

ADMIN_BAD_BODIES: list[tuple[str, dict[str, object], str]] = [
    ("unknown admin field", {"x": 1}, "edge_key.x"),
    ("not a vkey", {"key": "nope"}, "edge_key.key"),
    ("bad action", {"action": "delete"}, "edge_key.action"),
    ("key of another edge", {"edge": "edge-9"}, "edge_key.key"),
    ("missing window", {"valid_from_ms": None}, "edge_key.valid_from_ms"),
    ("string time", {"valid_from_ms": "0"}, "edge_key.valid_from_ms"),
    ("revoke without end", {"action": "revoke"}, "edge_key.valid_until_ms"),
]


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=[bad.case for bad in BAD_REQUESTS])
async def test_bad_requests_get_their_status_and_change_nothing(log: Log, bad: Bad) -> None:
    await log.register(EDGE)
    await log.submit(receipt(1))
    before = await log.snapshot()
    response = await log.client.request(bad.method, bad.path, content=bad.body, headers=bad.headers)
    assert response.status_code == bad.status, response.text
    assert bad.names in response.text
    assert await log.snapshot() == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [case[1:] for case in ADMIN_BAD_BODIES],
    ids=[case[0] for case in ADMIN_BAD_BODIES],
)
async def test_bad_admin_bodies_name_the_field(
    log: Log, changes: dict[str, object], field: str
) -> None:
    body: dict[str, object] = {"action": "register", "edge": "edge-1", "key": VKEY}
    body["valid_from_ms"] = 0
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not None}
    before = await log.snapshot()
    response = await log.client.post(
        "/v1/admin/edge-keys", json=body, headers={"Authorization": f"Bearer {log.token}"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert await log.snapshot() == before


def test_the_table_is_long_enough() -> None:
    assert len(BAD_REQUESTS) + len(ADMIN_BAD_BODIES) >= 30
    with pytest.raises(MalformedError):
        receipt(1, scope="nope")


@pytest.mark.parametrize(
    ("first", "second", "field"),
    [
        (None, {"action": "revoke", "valid_until_ms": 5}, "edge_key.key"),
        ({}, {"valid_from_ms": 5}, "edge_key.key"),  # the same request again: duplicate
        (
            {},
            {"action": "revoke", "valid_from_ms": 7, "valid_until_ms": 9},
            "edge_key.valid_from_ms",
        ),
        (None, {"action": "rotate", "replaces": "00000000"}, "edge_key.replaces"),
    ],
    ids=["revoke unknown key", "register twice", "revoke another window", "rotate unknown key"],
)
async def test_registry_statements_that_do_not_apply_are_refused(
    log: Log, first: dict[str, object] | None, second: dict[str, object], field: str
) -> None:
    if first is not None:
        assert (await log.register(EDGE, **first)).status_code == 200
    before = await log.snapshot()
    response = await log.register(EDGE, **second)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["field"] == field
    size, _, registry = await log.snapshot()
    assert (size, registry) == (before[0], before[2])


async def test_an_idle_log_re_signs_its_checkpoint(storage_url: str, tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path / "data",
        origin=ORIGIN,
        db=storage_url,
        pool_interval_s=0.01,
        checkpoint_interval_s=0.05,
    )
    app = create_app(config)
    async with started(app) as client:
        first = (await client.get("/v1/checkpoints")).json()["checkpoints"]
        history = first
        for _ in range(200):  # bounded: at most ~10 s
            history = (await client.get("/v1/checkpoints")).json()["checkpoints"]
            if len(history) >= len(first) + 2:
                break
            await anyio.sleep(0.05)
    assert len(history) >= len(first) + 2
    assert {(c["tree_size"], c["root_hash"]) for c in history} == {(0, EMPTY_ROOT_B64)}
    times = [c["signed_at_ms"] for c in history]
    assert times == sorted(times)
    assert times[-1] > times[0]


async def test_too_much_pending_work_is_503_with_retry_after(
    storage_url: str, tmp_path: Path
) -> None:
    config = Config(data_dir=tmp_path / "data", origin=ORIGIN, db=storage_url, max_pending=2)
    app = create_app(config)
    async with started(app) as client:
        log = Log(client, config.data_dir)
        assert (await log.register(EDGE)).status_code == 200
        before = await log.snapshot()
        response = await log.submit(*(receipt(i) for i in range(3)))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["field"] == "log"
        assert await log.snapshot() == before


async def test_work_queued_in_the_server_is_bounded_too(storage_url: str, tmp_path: Path) -> None:
    # Receipts count against max_pending from arrival, not only once pooled: with the work
    # thread held, a first batch waits to be checked and a second, over the limit, is
    # refused at once instead of queueing behind it.
    config = Config(data_dir=tmp_path / "data", origin=ORIGIN, db=storage_url, max_pending=3)
    app = create_app(config)
    async with started(app) as client:
        log = Log(client, config.data_dir)
        assert (await log.register(EDGE)).status_code == 200
        held = threading.Event()
        app.state.log.work.submit(held.wait, 30)
        first = asyncio.ensure_future(log.submit(receipt(0), receipt(1)))
        for _ in range(500):  # until the first batch is admitted (bounded)
            if app.state.log.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert app.state.log.in_flight == 2
        second = await log.submit(receipt(2), receipt(3))
        assert second.status_code == 503
        assert second.headers["retry-after"] == "1"
        assert "2 receipts are already being checked or logged" in second.text
        held.set()
        assert (await first).status_code == 200
        assert app.state.log.in_flight == 0
        assert (await log.submit(receipt(2), receipt(3))).status_code == 200
