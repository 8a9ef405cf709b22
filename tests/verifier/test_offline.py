"""verifier.offline: which checks a policy calls for, in what order, and what the report says.

A small log of an edge_key entry and a receipt is built in memory with tlog; each test hands
a bundle or checkpoint to the verifier and reads the report's steps.
"""

from __future__ import annotations

import dataclasses

import pytest

from tlog.bundle import ProofBundle, format_bundle
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import EdgeKey, Receipt, encode_entry, sign_edge_key, sign_receipt
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_vkey
from tlog.proofs import inclusion_proof
from verifier.offline import Report, TrustPolicy, check_bundle, check_checkpoint

LOG = SigningKey("log.example/usage", b"\x10" * 32)
OPERATOR = SigningKey("log.example/operator", b"\x20" * 32)
EDGE = SigningKey("edge-1", b"\x30" * 32)
WITNESS = SigningKey("witness.example/w1", b"\x40" * 32)
NOW_S = 1_763_856_000
RECEIPT = Receipt(
    request_id="r-1",
    edge="edge-1",
    consumer_id="buyer",
    token_id="tok-1",
    scope="training",
    content_id="sha256:" + "0" * 64,
    creator_id="alice",
    manifest="sha256:" + "1" * 64,
    bytes_sent=1,
    cache="hit",
    served_at_ms=2,
)


def _entries() -> list[bytes]:
    registration = sign_edge_key(
        EdgeKey(
            action="register", edge="edge-1", key=format_vkey(EDGE.verifier()), valid_from_ms=1
        ),
        OPERATOR,
    )
    return [encode_entry(registration), encode_entry(sign_receipt(RECEIPT, EDGE))]


ENTRIES = _entries()
STORE = MemoryHashStore()
STORE.append([leaf_hash(e) for e in ENTRIES])
CHECKPOINT = Checkpoint("log.example/usage", 2, root_hash(2, STORE))
SIGNED = sign_checkpoint(CHECKPOINT, [LOG.signer()])
COSIGNED = sign_checkpoint(CHECKPOINT, [LOG.signer(), WITNESS.cosigner(NOW_S)])
POLICY = TrustPolicy((LOG.verifier(),))


def _bundle(index: int, note: bytes = SIGNED, entry: bytes | None = None) -> bytes:
    proof = tuple(inclusion_proof(index, 2, STORE))
    return format_bundle(
        ProofBundle(index, proof, note, ENTRIES[index] if entry is None else entry)
    )


def _statuses(report: Report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_receipt_bundle_with_every_key_checks_every_step() -> None:
    report = check_bundle(_bundle(1), POLICY, [EDGE.verifier()])
    assert report.ok
    assert report.not_checked == 1  # no witness policy
    assert [c.name for c in report.checks] == [
        "bundle format",
        "checkpoint signature",
        "witness quorum",
        "inclusion",
        "entry format",
        "receipt signature",
    ]
    assert report.facts["request_id"] == "r-1"
    assert report.facts["index"] == 1


def test_edge_key_bundle_checks_the_operator_signature() -> None:
    report = check_bundle(_bundle(0), POLICY, operator_keys=[OPERATOR.verifier()])
    assert report.ok
    assert _statuses(report)["operator signature"] == "ok"
    assert report.facts["entry"] == "edge_key"


def test_edge_key_bundle_without_the_operator_key_says_so() -> None:
    report = check_bundle(_bundle(0), POLICY)
    assert report.ok
    assert _statuses(report)["operator signature"] == "not checked"


def test_an_edge_key_that_does_not_match_is_not_used() -> None:
    other = SigningKey("edge-1", b"\x31" * 32)
    report = check_bundle(_bundle(1), POLICY, [other.verifier()])
    assert _statuses(report)["receipt signature"] == "not checked"


def test_a_forged_receipt_signature_fails() -> None:
    forged = dataclasses.replace(sign_receipt(RECEIPT, EDGE), bytes_sent=1_000_000)
    entry = encode_entry(forged)
    store = MemoryHashStore()
    store.append([leaf_hash(ENTRIES[0]), leaf_hash(entry)])
    note = sign_checkpoint(Checkpoint("log.example/usage", 2, root_hash(2, store)), [LOG.signer()])
    bundle = ProofBundle(1, tuple(inclusion_proof(1, 2, store)), note, entry)
    report = check_bundle(format_bundle(bundle), POLICY, [EDGE.verifier()])
    assert not report.ok
    assert _statuses(report)["inclusion"] == "ok"  # the log faithfully logged a forgery
    assert _statuses(report)["receipt signature"] == "failed"


def test_witness_quorum_met_is_reported() -> None:
    policy = TrustPolicy((LOG.verifier(),), (WITNESS.verifier(ALG_COSIGNATURE_V1),), quorum=1)
    report = check_bundle(_bundle(1, COSIGNED), policy, [EDGE.verifier()])
    assert report.ok
    assert report.not_checked == 0
    assert report.facts["witnesses"] == ["witness.example/w1"]


def test_witness_quorum_unmet_stops_before_inclusion() -> None:
    policy = TrustPolicy((LOG.verifier(),), (WITNESS.verifier(ALG_COSIGNATURE_V1),), quorum=1)
    report = check_bundle(_bundle(1), policy)
    assert not report.ok
    assert [c.name for c in report.checks] == ["bundle format", "checkpoint signature"]


@pytest.mark.parametrize(
    ("data", "failed"),
    [
        (b"not a bundle", "bundle format"),
        (_bundle(1).replace(b"index 1", b"index 0"), "inclusion"),
        (_bundle(1, entry=b"{}"), "inclusion"),
    ],
)
def test_failures_name_the_step(data: bytes, failed: str) -> None:
    report = check_bundle(data, POLICY)
    assert not report.ok
    assert report.checks[-1].name == failed
    assert report.checks[-1].status == "failed"


def test_a_logged_entry_that_is_not_canonical_fails_the_entry_step() -> None:
    junk = b'{"kind": "receipt"}'
    store = MemoryHashStore()
    store.append([leaf_hash(junk)])
    note = sign_checkpoint(Checkpoint("log.example/usage", 1, root_hash(1, store)), [LOG.signer()])
    report = check_bundle(format_bundle(ProofBundle(0, (), note, junk)), POLICY)
    assert _statuses(report) == {
        "bundle format": "ok",
        "checkpoint signature": "ok",
        "witness quorum": "not checked",
        "inclusion": "ok",
        "entry format": "failed",
    }


def test_checkpoint_report_and_wrong_origin() -> None:
    assert check_checkpoint(SIGNED, POLICY).ok
    other_origin = TrustPolicy((LOG.verifier(),), origin="another.example/log")
    report = check_checkpoint(SIGNED, other_origin)
    assert not report.ok
    assert "origin" in report.checks[0].detail


def test_report_json_is_complete() -> None:
    data = check_checkpoint(SIGNED, POLICY).to_json()
    assert data["ok"] is True
    assert data["tree_size"] == 2
    assert data["origin"] == "log.example/usage"
    assert {"name", "status", "detail"} == set(data["checks"][0])  # type: ignore[index]
