"""tlog.evidence: consistency between trusted checkpoints, and the fork evidence file.

Evidence is conclusive only when the proof leads to the newer commitment's root and shows
another root at the older size; a proof that fails to verify shows nothing (anybody can send
one), so it is never accepted as a fork, in a v1 file or a v2 one.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlog.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint, sign_checkpoint
from tlog.errors import InconsistentLogError, MalformedError, ProofError, VerificationError
from tlog.evidence import (
    HEADER_V1,
    Anchor,
    ForkEvidence,
    format_fork_evidence,
    parse_fork_evidence,
    verify_checkpoints_consistent,
    verify_fork_evidence,
)
from tlog.hashing import EMPTY_ROOT, leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey
from tlog.parsing import encode_b64
from tlog.proofs import consistency_proof

ORIGIN = "log.example/e"
LOG = SigningKey(ORIGIN, b"\x31" * 32)
OTHER = SigningKey(ORIGIN, b"\x32" * 32)


def _tree(entries: list[bytes]) -> MemoryHashStore:
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in entries])
    return store


A = _tree([b"e%d" % i for i in range(20)])
B = _tree([b"e%d" % i for i in range(10)] + [b"f%d" % i for i in range(15)])
"""B agrees with A on the first 10 entries only."""


def _signed(store: MemoryHashStore, size: int, key: SigningKey = LOG) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, root_hash(size, store)), [key.signer()])


def _open(store: MemoryHashStore, size: int) -> SignedCheckpoint:
    return open_checkpoint(_signed(store, size), [LOG.verifier()])


def _proof(store: MemoryHashStore, old: int, new: int) -> tuple[bytes, ...]:
    return tuple(consistency_proof(old, new, store)) if 0 < old < new else ()


def _anchor(size: int, root: bytes) -> Anchor:
    return Anchor(
        chain_id=31337,
        contract="0x5fbdb2315678afecb367f032d93f642f64180aa3",
        block_number=27,
        block_hash=b"\x0b" * 32,
        tx_hash=b"\x0c" * 32,
        log_index=1,
        sender="0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
        tree_size=size,
        root_hash=root,
    )


def _v1(old: bytes, new: bytes, proof: tuple[bytes, ...]) -> bytes:
    """A file as the v1 writer wrote it."""
    head = "\n".join([HEADER_V1, *(encode_b64(h) for h in proof)]) + "\n\n"
    return b"".join([head.encode(), b"old %d\n" % len(old), old, b"new %d\n" % len(new), new])


def test_consistent_checkpoints_pass() -> None:
    for old in (0, 1, 7, 10, 16, 20):
        verify_checkpoints_consistent(_open(A, old), _open(A, 20), _proof(A, old, 20))
        prefix = root_hash(old, A)
        verify_checkpoints_consistent(
            _open(A, old), _open(A, 20), _proof(A, old, 20), prefix=prefix
        )
    # The shared prefix of A and B is consistent with B.
    verify_checkpoints_consistent(_open(A, 10), _open(B, 25), _proof(B, 10, 25))


@pytest.mark.parametrize(("old", "new"), [(11, 25), (20, 25), (15, 15), (12, 12), (16, 25)])
def test_a_fork_raises_with_both_checkpoints_the_proof_and_the_other_root(
    old: int, new: int
) -> None:
    a, b = _signed(A, old), _signed(B, new)
    proof = _proof(B, old, new)
    opened = open_checkpoint(a, [LOG.verifier()]), open_checkpoint(b, [LOG.verifier()])
    # From a power of two, the proof leaves the old root out: the caller gives the newer
    # tree's root at that size, read from hashes it authenticated.
    prefix = root_hash(old, B) if old == 16 else None
    with pytest.raises(InconsistentLogError) as caught:
        verify_checkpoints_consistent(*opened, proof, prefix=prefix)
    error = caught.value
    assert (error.old_checkpoint, error.new_checkpoint, error.proof) == (a, b, proof)
    assert error.prefix == root_hash(old, B) != root_hash(old, A)
    evidence = parse_fork_evidence(format_fork_evidence(ForkEvidence.from_error(error)))
    fork = verify_fork_evidence(evidence, [LOG.verifier()])
    assert (fork.tree_size, fork.new_size, fork.origin) == (old, new, ORIGIN)
    assert (fork.root_hash, fork.other_root) == (root_hash(old, A), root_hash(old, B))
    assert fork.anchors == []


def test_a_proof_that_shows_nothing_is_a_proof_error_not_a_fork() -> None:
    """A garbage proof between two consistent checkpoints, or a fork's proof from a power of
    two without the root it leaves out: a ProofError, never InconsistentLogError."""
    garbage = (b"\x00" * 32,) * len(_proof(A, 7, 20))
    with pytest.raises(ProofError):
        verify_checkpoints_consistent(_open(A, 7), _open(A, 20), garbage)
    with pytest.raises(ProofError):
        verify_checkpoints_consistent(_open(A, 16), _open(B, 25), _proof(B, 16, 25))
    # A prefix that is not the newer tree's is refused too, whatever it claims.
    with pytest.raises(ProofError):
        verify_checkpoints_consistent(
            _open(A, 16), _open(B, 25), _proof(B, 16, 25), prefix=b"\x01" * 32
        )


def test_every_pair_of_sizes_of_two_branches() -> None:
    """For every old <= new size of two branches that share 10 entries: the evidence built
    from the newer branch's proof and prefix is conclusive exactly when old > 10; and the
    evidence with a flipped bit in any proof hash or in the prefix never is."""
    for new in range(1, 26):
        for old in range(new + 1):
            if old > 20:
                continue
            evidence = ForkEvidence(
                _signed(A, old) if old else _signed(B, 0),
                _signed(B, new),
                _proof(B, old, new),
                root_hash(old, B),
            )
            if old > 10:
                fork = verify_fork_evidence(evidence, [LOG.verifier()])
                assert fork.other_root == root_hash(old, B), (old, new)
            else:
                with pytest.raises(VerificationError, match="not a fork"):
                    verify_fork_evidence(evidence, [LOG.verifier()])
            for i, h in enumerate(evidence.proof):
                bad = list(evidence.proof)
                bad[i] = bytes([h[0] ^ 1]) + h[1:]
                with pytest.raises(VerificationError, match="not evidence"):
                    verify_fork_evidence(
                        dataclasses.replace(evidence, proof=tuple(bad)), [LOG.verifier()]
                    )
            flipped = bytes([evidence.prefix[0] ^ 1]) + evidence.prefix[1:]  # type: ignore[index]
            with pytest.raises(VerificationError, match="not evidence"):
                verify_fork_evidence(
                    dataclasses.replace(evidence, prefix=flipped), [LOG.verifier()]
                )


def test_junk_v1_evidence_is_not_a_fork() -> None:
    """v1 accepted any failing proof. Now: garbage between two consistent checkpoints, the
    honest proof of a consistent pair with one bit flipped, or any proof from a power of two
    (which cannot show the old root) is not evidence of a fork."""
    sized = len(_proof(A, 7, 20))
    for proof in [
        (b"\x00" * 32,) * sized,
        (b"\xff" * 32,) * sized,
        (bytes([_proof(A, 7, 20)[0][0] ^ 1]) + _proof(A, 7, 20)[0][1:], *_proof(A, 7, 20)[1:]),
        (),
    ]:
        evidence = parse_fork_evidence(_v1(_signed(A, 7), _signed(A, 20), proof))
        assert evidence.prefix is None
        with pytest.raises(VerificationError, match="not evidence"):
            verify_fork_evidence(evidence, [LOG.verifier()])
    # A real fork, but from a power of two: the v1 proof shows no root at size 16.
    real = parse_fork_evidence(_v1(_signed(A, 16), _signed(B, 25), _proof(B, 16, 25)))
    with pytest.raises(VerificationError, match="power of two"):
        verify_fork_evidence(real, [LOG.verifier()])
    # The consistent pair with its honest proof: "not a fork", as in v1.
    honest = parse_fork_evidence(_v1(_signed(A, 7), _signed(A, 20), _proof(A, 7, 20)))
    with pytest.raises(VerificationError, match="not a fork"):
        verify_fork_evidence(honest, [LOG.verifier()])


@pytest.mark.parametrize(("old", "new"), [(11, 25), (20, 25), (15, 15), (12, 12)])
def test_conclusive_v1_evidence_is_still_accepted(old: int, new: int) -> None:
    data = _v1(_signed(A, old), _signed(B, new), _proof(B, old, new))
    fork = verify_fork_evidence(parse_fork_evidence(data), [LOG.verifier()])
    assert (fork.tree_size, fork.root_hash, fork.other_root) == (
        old,
        root_hash(old, A),
        root_hash(old, B),
    )


def test_evidence_not_signed_by_the_log_or_of_two_logs_is_refused() -> None:
    forged = ForkEvidence(_signed(A, 15), _signed(B, 15, OTHER), (), root_hash(15, B))
    with pytest.raises(VerificationError):
        verify_fork_evidence(forged, [LOG.verifier()])  # the second is not the log's
    other = SigningKey("log.example/other", b"\x31" * 32)
    elsewhere = sign_checkpoint(
        Checkpoint("log.example/other", 15, root_hash(15, B)), [other.signer()]
    )
    two_logs = ForkEvidence(_signed(A, 15), elsewhere, (), root_hash(15, B))
    with pytest.raises(VerificationError, match="not one log"):
        verify_fork_evidence(two_logs, [LOG.verifier(), other.verifier()])
    backwards = ForkEvidence(_signed(B, 25), _signed(A, 20), _proof(B, 20, 25), root_hash(20, B))
    with pytest.raises(MalformedError):
        verify_fork_evidence(backwards, [LOG.verifier()])


@pytest.mark.parametrize("old", [2, 11, 16, 20])
def test_an_anchor_against_a_checkpoint(old: int) -> None:
    """An anchor of A's tree (the log's address committed to it on chain) against B's signed
    checkpoint; and the other way round, B's checkpoint older than an anchor of A's larger
    tree. Conclusive past the shared entries; an anchor that agrees is not a fork."""
    anchored = _anchor(old, root_hash(old, A))
    evidence = ForkEvidence(anchored, _signed(B, 25), _proof(B, old, 25), root_hash(old, B))
    assert parse_fork_evidence(format_fork_evidence(evidence)) == evidence
    if old <= 10:
        with pytest.raises(VerificationError, match="not a fork"):
            verify_fork_evidence(evidence, [LOG.verifier()])
        return
    fork = verify_fork_evidence(evidence, [LOG.verifier()])
    assert fork.anchors == [anchored] and fork.origin == ORIGIN
    assert (fork.root_hash, fork.other_root) == (root_hash(old, A), root_hash(old, B))
    newer = ForkEvidence(_signed(B, old), _anchor(20, root_hash(20, A)), _proof(A, old, 20),
                         root_hash(old, A))  # fmt: skip
    fork = verify_fork_evidence(parse_fork_evidence(format_fork_evidence(newer)), [LOG.verifier()])
    assert fork.new == newer.new and fork.other_root == root_hash(old, A)


def test_two_anchors_or_no_checkpoint_are_malformed() -> None:
    with pytest.raises(MalformedError, match="two anchors"):
        ForkEvidence(_anchor(3, bytes(32)), _anchor(3, EMPTY_ROOT), (), EMPTY_ROOT)
    for bad in (
        {"contract": "0x5FBDB2315678afecb367f032d93f642f64180aa3"},
        {"sender": "0x1234"},
        {"tx_hash": b"\x00" * 31},
        {"tree_size": -1},
        {"log_index": True},
    ):
        with pytest.raises(MalformedError):
            dataclasses.replace(_anchor(3, EMPTY_ROOT), **bad)


hashes = st.binary(min_size=32, max_size=32)
anchors = st.builds(
    Anchor,
    chain_id=st.integers(0, 2**63 - 1),
    contract=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    block_number=st.integers(0, 2**63 - 1),
    block_hash=hashes,
    tx_hash=hashes,
    log_index=st.integers(0, 2**63 - 1),
    sender=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    tree_size=st.integers(0, 2**63 - 1),
    root_hash=hashes,
)
notes = st.binary(min_size=1, max_size=200)


@given(
    st.one_of(st.tuples(notes, notes), st.tuples(anchors, notes), st.tuples(notes, anchors)),
    st.lists(hashes, max_size=65),
    hashes,
)
def test_format_and_parse_are_inverse(
    sides: tuple[bytes | Anchor, bytes | Anchor], proof: list[bytes], prefix: bytes
) -> None:
    evidence = ForkEvidence(sides[0], sides[1], tuple(proof), prefix)
    assert parse_fork_evidence(format_fork_evidence(evidence)) == evidence


def test_v1_evidence_cannot_be_written_as_v2() -> None:
    with pytest.raises(MalformedError, match="prefix"):
        format_fork_evidence(ForkEvidence(b"A\n", b"B\n", ()))


_P = "prefix " + encode_b64(bytes(32))
_SIDES = "old checkpoint 1\nAnew checkpoint 1\nB"
_ANCHOR_TEXT = format_fork_evidence(ForkEvidence(_anchor(1, bytes(32)), b"B", (), bytes(32)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"meterlog-fork-evidence/v3\n\nold 1\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\nold 1\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 2\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 1\nAnew 1\nBextra",
        b"meterlog-fork-evidence/v1\n\nold 01\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 1\nAnew 5\nB",
        b"meterlog-fork-evidence/v1\nAAAA\n\nold 1\nAnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold 0\nnew 1\nB",
        b"meterlog-fork-evidence/v1\n\nold checkpoint 1\nAnew checkpoint 1\nB",
        b"meterlog-fork-evidence/v2\n\nold checkpoint 1\nAnew checkpoint 1\nB",
        f"meterlog-fork-evidence/v2\n{_P}\n\nold 1\nAnew 1\nB".encode(),
        f"meterlog-fork-evidence/v2\n{_P}\n\nold note 1\nAnew checkpoint 1\nB".encode(),
        f"meterlog-fork-evidence/v2\n{_P}\n\nold checkpoint 1\nAnew checkpoint 1\nB\n".encode(),
        f"meterlog-fork-evidence/v2\n{_P}=\n\nold checkpoint 1\nAnew checkpoint 1\nB".encode(),
        f"meterlog-fork-evidence/v2\nprefix {_P}\n\n{_SIDES}".encode(),
        f"meterlog-fork-evidence/v2\n{_P}\n\nold  checkpoint 1\nAnew checkpoint 1\nB".encode(),
        f"meterlog-fork-evidence/v2\n{_P}\n\nold anchor 2\nA\nnew checkpoint 1\nB".encode(),
        _ANCHOR_TEXT.replace(b"chain_id 31337", b"chain_id 031337"),
        _ANCHOR_TEXT.replace(b"chain_id 31337", b"chainid 31337"),
        _ANCHOR_TEXT.replace(b"0x5fbdb", b"0x5FBDB"),
        _ANCHOR_TEXT.replace(b"tx_hash 0x0c", b"tx_hash 0x0C"),
        _ANCHOR_TEXT.replace(b"log_index 1\n", b"log_index 1\nextra 2\n").replace(
            b"old anchor 365", b"old anchor 373"
        ),
        _ANCHOR_TEXT.replace(b"old anchor 365", b"new anchor 360"),
    ],
)
def test_malformed_evidence_is_rejected(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_fork_evidence(data)


def test_the_anchor_text_is_what_the_malformed_cases_edit() -> None:
    assert b"old anchor 365\nchain_id 31337\ncontract 0x5fbdb" in _ANCHOR_TEXT
    assert b"tx_hash 0x0c0c" in _ANCHOR_TEXT and b"log_index 1\n" in _ANCHOR_TEXT
