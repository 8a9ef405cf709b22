"""docs/formats.md's worked example is a test vector: every marked block is rebuilt here.

The inputs come from the doc's own ``example: inputs`` block; every other ``example:`` block
must equal, byte for byte, what tlog produces from them, and the bundle must verify through
the command a reader is told to run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from tlog.bundle import ProofBundle, format_bundle
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import (
    EdgeKey,
    Receipt,
    canonical_json,
    decode_entry,
    encode_entry,
    sign_edge_key,
    sign_receipt,
)
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, format_vkey
from tlog.proofs import inclusion_proof

DOC = Path(__file__).parent.parent / "docs" / "formats.md"
_BLOCK = re.compile(r"<!-- example: (?P<name>[\w-]+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    found = {m["name"]: m["body"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(found) == {
        "inputs",
        "vkeys",
        "receipt-signed-fields",
        "entry-0",
        "entry-1",
        "leaf-hashes",
        "checkpoint",
        "bundle",
    }
    return found


@pytest.fixture(scope="module")
def rebuilt(blocks: dict[str, str]) -> dict[str, Any]:
    inputs = json.loads(blocks["inputs"])

    def key(role: str) -> SigningKey:
        return SigningKey(inputs[role]["name"], bytes.fromhex(inputs[role]["seed_hex"]))

    log, operator, edge = key("log_key"), key("operator_key"), key("edge_key")
    reg = inputs["registration"]
    registration = sign_edge_key(
        EdgeKey(
            action=reg["action"],
            edge=reg["edge"],
            key=format_vkey(edge.verifier()),
            valid_from_ms=reg["valid_from_ms"],
        ),
        operator,
    )
    fields = dict(inputs["receipt"])
    logged_at_ms = fields.pop("logged_at_ms")
    content = fields.pop("content_of").encode()
    manifest = fields.pop("manifest_of").encode()
    receipt = sign_receipt(
        Receipt(
            **fields,
            content_id="sha256:" + hashlib.sha256(content).hexdigest(),
            manifest="sha256:" + hashlib.sha256(manifest).hexdigest(),
        ),
        edge,
    )
    entries = [
        encode_entry(replace(registration, logged_at_ms=reg["logged_at_ms"])),
        encode_entry(replace(receipt, logged_at_ms=logged_at_ms)),
    ]
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in entries])
    checkpoint = Checkpoint(inputs["origin"], 2, root_hash(2, store))
    signed = sign_checkpoint(checkpoint, [log.signer()])
    bundle = ProofBundle(1, tuple(inclusion_proof(1, 2, store)), signed, extra=entries[1])
    return {
        "vkeys": "".join(format_vkey(k.verifier()) + "\n" for k in (log, operator, edge)),
        "receipt-signed-fields": canonical_json(receipt.signed_fields()).decode() + "\n",
        "entry-0": entries[0].decode() + "\n",
        "entry-1": entries[1].decode() + "\n",
        "leaf-hashes": "".join(leaf_hash(e).hex() + "\n" for e in entries),
        "checkpoint": signed.decode(),
        "bundle": format_bundle(bundle).decode(),
    }


@pytest.mark.parametrize(
    "name",
    ["vkeys", "receipt-signed-fields", "entry-0", "entry-1", "leaf-hashes", "checkpoint", "bundle"],
)
def test_doc_block_is_what_tlog_produces(
    name: str, blocks: dict[str, str], rebuilt: dict[str, Any]
) -> None:
    assert blocks[name] == rebuilt[name]


def test_doc_entries_decode_and_reencode(blocks: dict[str, str]) -> None:
    for name in ("entry-0", "entry-1"):
        data = blocks[name].rstrip("\n").encode()
        assert encode_entry(decode_entry(data)) == data


def test_doc_bundle_verifies_with_the_documented_command(
    blocks: dict[str, str], tmp_path: Path
) -> None:
    bundle = tmp_path / "example.tlog-proof"
    bundle.write_text(blocks["bundle"], encoding="utf-8")
    log_vkey, _, edge_vkey = blocks["vkeys"].splitlines()
    (tmp_path / "log.vkey").write_text(log_vkey + "\n", encoding="utf-8")
    argv = ["verify", "bundle", "--key", str(tmp_path / "log.vkey"), "--edge-key", edge_vkey]
    assert main([*argv, str(bundle)]) == 0
