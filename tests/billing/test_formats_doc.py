"""docs/formats.md's billing example is a test vector: every ``billing-example`` block is
rebuilt here from the doc's own ``inputs`` block, with tlog and the billing engine, and must
equal what the doc shows byte for byte. ``METERLOG_UPDATE_GOLDEN=1`` rewrites the blocks in
the doc (then review the diff)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from billing.engine import Engine, RunPlan
from billing.indexes import LeafIndexLists
from billing.policy import parse_policy
from billing.run import statement_entry
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import (
    Creator,
    Dispute,
    EdgeKey,
    Manifest,
    Receipt,
    decode_entry,
    encode_entry,
    sign_creator,
    sign_dispute,
    sign_edge_key,
    sign_manifest,
    sign_receipt,
    sign_statement,
    verify_creator,
    verify_dispute,
    verify_manifest,
    verify_statement,
)
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, format_vkey
from tlog.parsing import encode_b64
from tlog.statement import parse_statement, statement_chunks, statement_digest

DOC = Path(__file__).parents[2] / "docs" / "formats.md"
_BLOCK = re.compile(
    r"(<!-- billing-example: (?P<name>[\w-]+) -->\n```[a-z]*\n)(?P<body>.*?)```", re.S
)


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def rebuild(inputs: dict[str, Any]) -> dict[str, str]:
    origin = inputs["origin"]
    log = SigningKey(origin, bytes.fromhex(inputs["log_seed_hex"]))
    operator = SigningKey("log.example.com/operator", bytes.fromhex(inputs["operator_seed_hex"]))
    edge = SigningKey("edge-fra1", bytes.fromhex(inputs["edge_seed_hex"]))
    c = inputs["creator"]
    alice = SigningKey(c["creator_id"], bytes.fromhex(c["seed_hex"]))
    billing = SigningKey(inputs["billing"]["name"], bytes.fromhex(inputs["billing"]["seed_hex"]))
    m = inputs["manifest"]
    logged = inputs["logged_at_ms"]
    content = _digest(m["content_of"])
    manifest = sign_manifest(
        Manifest(
            action="publish", creator_id=alice.name, content_id=content, version=m["version"],
            manifest=_digest(m["manifest_of"]), scopes=tuple(m["scopes"]),
            terms=tuple(sorted(m["terms"].items())), license=m["license"],
        ),
        alice,
    )  # fmt: skip
    entries = [
        sign_edge_key(EdgeKey("register", edge.name, format_vkey(edge.verifier()), 0), operator),
        sign_creator(Creator(alice.name, format_vkey(alice.verifier()), c["currency"]), operator),
        manifest,
    ]
    for r in inputs["receipts"]:
        entries.append(
            sign_receipt(
                Receipt(
                    edge=edge.name, consumer_id="acme-ai", token_id="tok-7f3a", scope="training",
                    content_id=content, creator_id=alice.name, manifest=manifest.manifest,
                    cache="miss", **r,
                ),
                edge,
            )
        )  # fmt: skip
    data = [encode_entry(dataclasses.replace(e, logged_at_ms=logged)) for e in entries]
    store = MemoryHashStore()
    store.append([leaf_hash(d) for d in data])
    closed = inputs["closed_at_ms"]
    note = sign_checkpoint(
        Checkpoint(origin, len(data), root_hash(len(data), store)),
        [log.signer(), log.cosigner(closed // 1000)],
    )
    plan = RunPlan(
        policy=parse_policy(inputs["policy"].encode()), origin=origin, checkpoint=note.decode(),
        root_hash=encode_b64(root_hash(len(data), store)), start=0, end=len(data),
        period_start_ms=0, period_end_ms=closed // 1000 * 1000,
        billing_key=format_vkey(billing.verifier()),
    )  # fmt: skip
    with LeafIndexLists() as lists:
        engine = Engine(plan, lists)
        for index, entry in enumerate(data):
            engine.feed(index, entry)
        run = engine.finish()
        (mine,) = run.statements
        statement = b"".join(statement_chunks(mine.document.head(), run.indices(mine)))
    digest = statement_digest(statement)
    logged_statement = sign_statement(statement_entry(mine.document, digest), billing)
    dispute = sign_dispute(
        Dispute("open", alice.name, digest, 1, "line 1 counts a retry as a second job"), alice
    )
    opened_at = len(data) + 1  # after the statement entry
    withdrawal = sign_dispute(
        Dispute("close", alice.name, digest, 1, "the retry was mine", follows=opened_at), alice
    )
    return {
        "entry-creator": data[1].decode() + "\n",
        "entry-manifest": data[2].decode() + "\n",
        "statement": statement.decode() + "\n",
        "statement-digest": digest + "\n",
        "entry-statement": encode_entry(logged_statement).decode() + "\n",
        "entry-dispute": encode_entry(dispute).decode() + "\n",
        "entry-dispute-withdrawal": encode_entry(withdrawal).decode() + "\n",
    }


def _blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}


def test_the_billing_example_is_what_tlog_and_the_engine_build() -> None:
    blocks = _blocks()
    inputs = json.loads(blocks.pop("inputs"))
    rebuilt = rebuild(inputs)
    if os.environ.get("METERLOG_UPDATE_GOLDEN") == "1":
        text = DOC.read_text(encoding="utf-8")

        def fill(found: re.Match[str]) -> str:
            name = found["name"]
            return found.group(1) + (rebuilt[name] if name in rebuilt else found["body"]) + "```"

        DOC.write_text(_BLOCK.sub(fill, text), encoding="utf-8")
        blocks = {k: v for k, v in _blocks().items() if k != "inputs"}
    assert set(blocks) == set(rebuilt)
    for name, body in rebuilt.items():
        assert blocks[name] == body, f"docs/formats.md block {name!r} is not what tlog builds"


def test_the_example_entries_verify_and_the_statement_parses() -> None:
    blocks = _blocks()
    inputs = json.loads(blocks["inputs"])
    operator = SigningKey("log.example.com/operator", bytes.fromhex(inputs["operator_seed_hex"]))
    alice = SigningKey(
        inputs["creator"]["creator_id"], bytes.fromhex(inputs["creator"]["seed_hex"])
    )
    billing = SigningKey(inputs["billing"]["name"], bytes.fromhex(inputs["billing"]["seed_hex"]))
    creator = decode_entry(blocks["entry-creator"].rstrip("\n").encode())
    verify_creator(creator, operator.verifier())  # type: ignore[arg-type]
    manifest = decode_entry(blocks["entry-manifest"].rstrip("\n").encode())
    verify_manifest(manifest, alice.verifier())  # type: ignore[arg-type]
    statement = blocks["statement"].rstrip("\n").encode()
    document = parse_statement(statement)
    assert [line.amount_minor for line in document.lines] == [10, 400]
    assert (document.totals.gross_minor, document.totals.paid_minor) == (410, 295)
    entry = decode_entry(blocks["entry-statement"].rstrip("\n").encode())
    verify_statement(entry, billing.verifier())  # type: ignore[arg-type]
    assert entry.digest == statement_digest(statement) == blocks["statement-digest"].strip()  # type: ignore[union-attr]
    dispute = decode_entry(blocks["entry-dispute"].rstrip("\n").encode())
    verify_dispute(dispute, alice.verifier())  # type: ignore[arg-type]
    withdrawal = decode_entry(blocks["entry-dispute-withdrawal"].rstrip("\n").encode())
    verify_dispute(withdrawal, alice.verifier())  # type: ignore[arg-type]
    assert isinstance(withdrawal, Dispute) and isinstance(dispute, Dispute)
    assert (dispute.follows, withdrawal.action, withdrawal.follows) == (None, "close", 7)
