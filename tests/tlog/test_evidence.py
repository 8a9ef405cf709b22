"""tlog.evidence: consistency between trusted checkpoints, and the fork evidence file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from tlog.errors import InconsistentLogError, MalformedError, VerificationError
from tlog.evidence import (
    ForkEvidence,
    format_fork_evidence,
    parse_fork_evidence,
    verify_checkpoints_consistent,
    verify_fork_evidence,
)
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey
from tlog.proofs import consistency_proof

LOG = SigningKey("log.example/e", b"\x31" * 32)
OTHER = SigningKey("log.example/e", b"\x32" * 32)


def _tree(entries: list[bytes]) -> MemoryHashStore:
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in entries])
    return store


A = _tree([b"e%d" % i for i in range(20)])
B = _tree([b"e%d" % i for i in range(10)] + [b"f%d" % i for i in range(15)])


def _signed(store: MemoryHashStore, size: int, key: SigningKey = LOG) -> bytes:
    return sign_checkpoint(
        Checkpoint("log.example/e", size, root_hash(size, store)), [key.signer()]
    )


def test_consistent_checkpoints_pass() -> None:
    for old in (1, 7, 10, 16, 20):
        verify_checkpoints_consistent(
            open_checkpoint(_signed(A, old), [LOG.verifier()]),
            open_checkpoint(_signed(A, 20), [LOG.verifier()]),
            consistency_proof(old, 20, A),
        )
    # The shared prefix of A and B is consistent with B.
    verify_checkpoints_consistent(
        open_checkpoint(_signed(A, 10), [LOG.verifier()]),
        open_checkpoint(_signed(B, 25), [LOG.verifier()]),
        consistency_proof(10, 25, B),
    )


@pytest.mark.parametrize(("old", "new"), [(11, 25), (20, 25), (16, 16), (12, 12)])
def test_a_fork_raises_with_both_checkpoints_and_the_proof(old: int, new: int) -> None:
    a, b = _signed(A, old), _signed(B, new)
    proof = consistency_proof(old, new, B) if old < new else []
    with pytest.raises(InconsistentLogError) as caught:
        verify_checkpoints_consistent(
            open_checkpoint(a, [LOG.verifier()]), open_checkpoint(b, [LOG.verifier()]), proof
        )
    error = caught.value
    assert (error.old_checkpoint, error.new_checkpoint, error.proof) == (a, b, tuple(proof))
    evidence = parse_fork_evidence(format_fork_evidence(ForkEvidence.from_error(error)))
    opened = verify_fork_evidence(evidence, [LOG.verifier()])
    assert [o.checkpoint.tree_size for o in opened] == [old, new]


def test_evidence_of_no_fork_is_refused() -> None:
    evidence = ForkEvidence(_signed(A, 7), _signed(A, 20), tuple(consistency_proof(7, 20, A)))
    with pytest.raises(VerificationError, match="not a fork"):
        verify_fork_evidence(evidence, [LOG.verifier()])
    forged = ForkEvidence(_signed(A, 16), _signed(B, 16, OTHER), ())
    with pytest.raises(VerificationError):
        verify_fork_evidence(forged, [LOG.verifier()])  # the second is not the log's


def test_wrong_order_or_origin_is_malformed() -> None:
    with pytest.raises(MalformedError):
        verify_checkpoints_consistent(
            open_checkpoint(_signed(A, 20), [LOG.verifier()]),
            open_checkpoint(_signed(A, 7), [LOG.verifier()]),
            [],
        )
    other = SigningKey("log.example/other", b"\x31" * 32)
    elsewhere = sign_checkpoint(
        Checkpoint("log.example/other", 7, root_hash(7, A)), [other.signer()]
    )
    with pytest.raises(MalformedError):
        verify_checkpoints_consistent(
            open_checkpoint(elsewhere, [other.verifier()]),
            open_checkpoint(_signed(A, 20), [LOG.verifier()]),
            consistency_proof(7, 20, A),
        )


@given(
    st.binary(min_size=1, max_size=200),
    st.binary(min_size=1, max_size=200),
    st.lists(st.binary(min_size=32, max_size=32), max_size=65),
)
def test_format_and_parse_are_inverse(old: bytes, new: bytes, proof: list[bytes]) -> None:
    evidence = ForkEvidence(old, new, tuple(proof))
    assert parse_fork_evidence(format_fork_evidence(evidence)) == evidence


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"meterlog-fork-evidence/v2\n\nold 1\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\nold 1\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 2\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 1\nAnew 1\nBextra",
        b"meterlog-fork-evidence/v1\n\nold 01\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 1\nAnew 5\nB",
        b"meterlog-fork-evidence/v1\nAAAA\n\nold 1\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 0\nnew 1\nB",
    ],
)
def test_malformed_evidence_is_rejected(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_fork_evidence(data)
