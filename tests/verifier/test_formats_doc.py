"""docs/formats.md's witnessing, policy and fork-evidence examples are test vectors.

The blocks marked ``verifier-example:`` are rebuilt here from the doc's own inputs block and
must match byte for byte; each is then read back with its parser and checked as a verifier
would (the cosignature meets the policy's quorum, the evidence proves a fork).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.evidence import (
    ForkEvidence,
    format_fork_evidence,
    parse_fork_evidence,
    verify_fork_evidence,
)
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_signature_line, format_vkey
from tlog.policy import format_policy, open_checkpoint_with_policy, parse_policy
from tlog.proofs import consistency_proof
from tlog.witness import (
    AddCheckpoint,
    format_add_checkpoint,
    merge_signatures,
    parse_add_checkpoint,
    parse_signature_lines,
)

DOC = Path(__file__).parent.parent.parent / "docs" / "formats.md"
_BLOCK = re.compile(
    r"<!-- verifier-example: (?P<name>[\w-]+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S
)


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    found = {m["name"]: m["body"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(found) == {"inputs", "policy", "add-checkpoint", "cosignature", "evidence"}
    return found


@pytest.fixture(scope="module")
def rebuilt(blocks: dict[str, str]) -> dict[str, Any]:
    inputs = json.loads(blocks["inputs"])

    def key(role: str) -> SigningKey:
        return SigningKey(inputs[role]["name"], bytes.fromhex(inputs[role]["seed_hex"]))

    log, witness = key("log_key"), key("witness_key")

    def tree(entries: list[str]) -> MemoryHashStore:
        store = MemoryHashStore()
        store.append([leaf_hash(e.encode()) for e in entries])
        return store

    a = tree(inputs["entries"])
    b = tree(inputs["entries"][:2] + inputs["other_entries"])

    def note(store: MemoryHashStore, size: int) -> bytes:
        checkpoint = Checkpoint(inputs["origin"], size, root_hash(size, store))
        return sign_checkpoint(checkpoint, [log.signer()])

    policy = (
        f"log {format_vkey(log.verifier())} {inputs['log_url']}\n"
        f"witness w1 {format_vkey(witness.verifier(ALG_COSIGNATURE_V1))} {inputs['witness_url']}\n"
        "quorum w1\n"
    )
    request = AddCheckpoint(2, tuple(consistency_proof(2, 4, a)), note(a, 4))
    text = note(a, 4).decode().split("\n\n")[0] + "\n"
    evidence = ForkEvidence(
        note(a, 4), note(b, 5), tuple(consistency_proof(4, 5, b)), root_hash(4, b)
    )
    return {
        "policy": policy,
        "add-checkpoint": format_add_checkpoint(request).decode(),
        "cosignature": format_signature_line(text, witness.cosigner(inputs["timestamp_s"])),
        "evidence": format_fork_evidence(evidence).decode(),
        "log": log,
        "roots": (root_hash(4, a), root_hash(4, b)),
    }


@pytest.mark.parametrize("name", ["policy", "add-checkpoint", "cosignature", "evidence"])
def test_doc_block_is_what_tlog_produces(
    name: str, blocks: dict[str, str], rebuilt: dict[str, Any]
) -> None:
    assert blocks[name] == rebuilt[name]


def test_doc_blocks_read_back_and_verify(blocks: dict[str, str], rebuilt: dict[str, Any]) -> None:
    policy = parse_policy(blocks["policy"])
    assert format_policy(policy) == blocks["policy"]
    request = parse_add_checkpoint(blocks["add-checkpoint"].encode())
    lines = parse_signature_lines(blocks["cosignature"].encode())
    cosigned = merge_signatures(request.checkpoint, lines)
    assert open_checkpoint_with_policy(cosigned, policy).checkpoint.tree_size == 4
    evidence = parse_fork_evidence(blocks["evidence"].encode())
    fork = verify_fork_evidence(evidence, [rebuilt["log"].verifier()])
    assert (fork.tree_size, fork.new_size) == (4, 5)
    assert (fork.root_hash, fork.other_root) == rebuilt["roots"]


def test_the_doc_evidence_is_a_fork_for_the_command(
    blocks: dict[str, str], rebuilt: dict[str, Any], tmp_path: Path
) -> None:
    """``meterlog verify evidence`` on the doc's file: exit 10; with the prefix line taken
    out (as a v1 file), 1: from size 4, a power of two, the proof alone shows no root."""
    vkey = format_vkey(rebuilt["log"].verifier())
    path = tmp_path / "fork.evidence"
    path.write_text(blocks["evidence"], encoding="utf-8")
    assert main(["verify", "evidence", str(path), "--key", vkey]) == 10
    head, rest = blocks["evidence"].split("\n", 2)[::2], blocks["evidence"].split("\n", 2)[2]
    v1 = "meterlog-fork-evidence/v1\n" + rest.replace(" checkpoint ", " ")
    assert head[0] == "meterlog-fork-evidence/v2"
    path.write_text(v1, encoding="utf-8")
    assert main(["verify", "evidence", str(path), "--key", vkey]) == 1
