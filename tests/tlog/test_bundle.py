"""Tests of tlog.bundle: the C2SP tlog-proof text format, parsed strictly, and verify_bundle's
full check (log signature, witness quorum, inclusion of the entry) against a MemoryHashStore
log whose checkpoints are signed here.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.bundle import (
    HEADER,
    MAX_BUNDLE_SIZE,
    ProofBundle,
    format_bundle,
    parse_bundle,
    verify_bundle,
)
from tlog.checkpoint import Checkpoint, format_checkpoint, sign_checkpoint
from tlog.errors import (
    InvalidSignatureError,
    MalformedError,
    ProofError,
    UnknownKeyError,
    VerificationError,
)
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import ALG_COSIGNATURE_V1, SigningKey
from tlog.proofs import MAX_PROOF_LENGTH, inclusion_proof

ORIGIN = "example.com/usage-log"
LOG = SigningKey(ORIGIN, bytes(range(32, 64)))
WITNESS_1 = SigningKey("witness.example.com/w1", bytes(range(32)))
WITNESS_2 = SigningKey("witness.example.com/w2", bytes(range(1, 33)))
NOW_S = 1_700_000_000
SIZE = 37
"""An odd size: proofs of different lengths, and a right edge that is not a perfect subtree."""

ENTRIES = [b'{"kind":"test","n":%d}' % i for i in range(SIZE)]
REJECTED = (MalformedError, VerificationError)


@pytest.fixture(scope="module")
def log() -> MemoryHashStore:
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in ENTRIES])
    return store


@pytest.fixture(scope="module")
def checkpoint(log: MemoryHashStore) -> Checkpoint:
    return Checkpoint(ORIGIN, SIZE, root_hash(SIZE, log))


@pytest.fixture(scope="module")
def signed(checkpoint: Checkpoint) -> bytes:
    return sign_checkpoint(checkpoint, [LOG.signer(), WITNESS_1.cosigner(NOW_S)])


def make_bundle(log: MemoryHashStore, signed: bytes, index: int) -> ProofBundle:
    proof = tuple(inclusion_proof(index, SIZE, log))
    return ProofBundle(index, proof, signed, ENTRIES[index])


# ---------------------------------------------------------------------------------------------
# Building and verifying.


def test_every_bundle_of_the_log_verifies(
    log: MemoryHashStore, checkpoint: Checkpoint, signed: bytes
) -> None:
    for index in range(SIZE):
        bundle = make_bundle(log, signed, index)
        data = format_bundle(bundle)
        assert data.startswith(f"{HEADER}\nextra ".encode())
        assert data.endswith(b"\n\n" + signed)
        parsed = parse_bundle(data)
        assert parsed == bundle
        verified = verify_bundle(parsed, [LOG.verifier()], origin=ORIGIN)
        assert verified.entry == ENTRIES[index]
        assert verified.index == index
        assert verified.leaf_hash == leaf_hash(ENTRIES[index])
        assert verified.checkpoint.checkpoint == checkpoint


def test_the_entry_may_come_from_outside(log: MemoryHashStore, signed: bytes) -> None:
    bundle = dataclasses.replace(make_bundle(log, signed, 5), extra=None)
    assert b"extra" not in format_bundle(bundle)
    assert parse_bundle(format_bundle(bundle)) == bundle
    assert verify_bundle(bundle, [LOG.verifier()], entry=ENTRIES[5]).entry == ENTRIES[5]
    with pytest.raises(MalformedError):
        verify_bundle(bundle, [LOG.verifier()])
    # A given entry is the one checked, whatever the bundle carries.
    with pytest.raises(ProofError):
        verify_bundle(make_bundle(log, signed, 5), [LOG.verifier()], entry=ENTRIES[6])


def test_a_tampered_entry_fails(log: MemoryHashStore, signed: bytes) -> None:
    bundle = make_bundle(log, signed, 11)
    entry = ENTRIES[11]
    for at in range(len(entry)):
        changed = bytearray(entry)
        changed[at] ^= 0x01
        with pytest.raises(ProofError):
            verify_bundle(dataclasses.replace(bundle, extra=bytes(changed)), [LOG.verifier()])
    for extra in (b"", entry + b" ", entry[:-1], ENTRIES[12]):
        with pytest.raises(ProofError):
            verify_bundle(dataclasses.replace(bundle, extra=extra), [LOG.verifier()])


def test_a_tampered_index_fails(log: MemoryHashStore, signed: bytes) -> None:
    for index in (0, 11, SIZE - 1):
        bundle = make_bundle(log, signed, index)
        for other in [*range(SIZE + 3), 1 << 40, (1 << 63) - 1]:
            if other != index:
                with pytest.raises(ProofError):
                    verify_bundle(dataclasses.replace(bundle, index=other), [LOG.verifier()])


def test_a_tampered_proof_fails(log: MemoryHashStore, signed: bytes) -> None:
    for index in (0, 11, 32, SIZE - 1):
        bundle = make_bundle(log, signed, index)
        proof = bundle.proof
        assert proof
        for i in range(len(proof)):
            for at in range(32):
                changed = bytearray(proof[i])
                changed[at] ^= 1 << (at % 8)
                tampered = (*proof[:i], bytes(changed), *proof[i + 1 :])
                with pytest.raises(ProofError):
                    verify_bundle(dataclasses.replace(bundle, proof=tampered), [LOG.verifier()])
        for tampered in (proof[:-1], proof[1:], (*proof, proof[0]), proof[::-1], ()):
            if tampered != proof:
                with pytest.raises(ProofError):
                    verify_bundle(dataclasses.replace(bundle, proof=tampered), [LOG.verifier()])


def test_a_tampered_checkpoint_fails(
    log: MemoryHashStore, checkpoint: Checkpoint, signed: bytes
) -> None:
    bundle = make_bundle(log, signed, 7)
    text = format_checkpoint(checkpoint).encode()
    assert signed.startswith(text)
    root_b64 = base64.b64encode(checkpoint.root_hash)
    other_root = base64.b64encode(root_hash(SIZE - 1, log))
    forgeries = [
        signed.replace(root_b64, other_root),
        signed.replace(b"\n%d\n" % SIZE, b"\n%d\n" % (SIZE + 1)),
        signed.replace(ORIGIN.encode(), b"example.com/other-log", 1),
    ]
    for forged in forgeries:
        assert forged != signed
        with pytest.raises(InvalidSignatureError):
            verify_bundle(dataclasses.replace(bundle, checkpoint=forged), [LOG.verifier()])
    # Every single-bit change of the signed checkpoint is caught, wherever it lands (with the
    # witness trusted: an untrusted cosignature line is carried along, not checked).
    for at in range(len(signed)):
        changed = bytearray(signed)
        changed[at] ^= 0x04
        with pytest.raises(REJECTED):
            verify_bundle(
                dataclasses.replace(bundle, checkpoint=bytes(changed)),
                [LOG.verifier()],
                witnesses=[WITNESS_1.verifier(ALG_COSIGNATURE_V1)],
                quorum=1,
            )
    # A correct checkpoint, signed by a key that is not the log's.
    impostor = SigningKey(ORIGIN, bytes(32))
    with pytest.raises(UnknownKeyError):
        verify_bundle(
            dataclasses.replace(
                bundle, checkpoint=sign_checkpoint(checkpoint, [impostor.signer()])
            ),
            [LOG.verifier()],
        )


def test_every_single_bit_change_of_the_bundle_is_caught(
    log: MemoryHashStore, signed: bytes
) -> None:
    data = format_bundle(make_bundle(log, signed, 20))
    witnesses = [WITNESS_1.verifier(ALG_COSIGNATURE_V1)]
    verify_bundle(parse_bundle(data), [LOG.verifier()], witnesses=witnesses, quorum=1)
    for at in range(len(data)):
        for bit in (0, 5):
            changed = bytearray(data)
            changed[at] ^= 1 << bit
            with pytest.raises(REJECTED):
                bundle = parse_bundle(bytes(changed))
                verify_bundle(bundle, [LOG.verifier()], witnesses=witnesses, quorum=1)


def test_a_checkpoint_of_another_size_does_not_verify_old_proofs(log: MemoryHashStore) -> None:
    old = sign_checkpoint(Checkpoint(ORIGIN, SIZE - 1, root_hash(SIZE - 1, log)), [LOG.signer()])
    proof = tuple(inclusion_proof(3, SIZE, log))
    with pytest.raises(ProofError):
        verify_bundle(ProofBundle(3, proof, old, ENTRIES[3]), [LOG.verifier()])
    proof = tuple(inclusion_proof(3, SIZE - 1, log))
    verify_bundle(ProofBundle(3, proof, old, ENTRIES[3]), [LOG.verifier()])


def test_witness_quorum_through_verify_bundle(log: MemoryHashStore, signed: bytes) -> None:
    bundle = make_bundle(log, signed, 9)
    w1 = WITNESS_1.verifier(ALG_COSIGNATURE_V1)
    w2 = WITNESS_2.verifier(ALG_COSIGNATURE_V1)
    verified = verify_bundle(bundle, [LOG.verifier()], witnesses=[w1, w2], quorum=1)
    assert verified.checkpoint.witnesses == (w1,)
    with pytest.raises(VerificationError):
        verify_bundle(bundle, [LOG.verifier()], witnesses=[w1, w2], quorum=2)
    with pytest.raises(VerificationError):
        verify_bundle(bundle, [LOG.verifier()], witnesses=[w2], quorum=1)
    with pytest.raises(MalformedError):
        verify_bundle(bundle, [LOG.verifier()], witnesses=[w1], quorum=2)
    with pytest.raises(VerificationError):
        verify_bundle(bundle, [LOG.verifier()], origin="example.com/other-log")
    with pytest.raises(UnknownKeyError):
        verify_bundle(bundle, [WITNESS_2.verifier()])


# ---------------------------------------------------------------------------------------------
# Format and parse.

bundles = st.builds(
    ProofBundle,
    index=st.integers(min_value=0, max_value=(1 << 63) - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LENGTH).map(tuple),
    checkpoint=st.binary(min_size=1, max_size=300),
    extra=st.none() | st.binary(max_size=300),
)


@settings(max_examples=150)
@given(bundles)
def test_format_parse_round_trip(bundle: ProofBundle) -> None:
    data = format_bundle(bundle)
    assert parse_bundle(data) == bundle
    assert format_bundle(parse_bundle(data)) == data
    head = data[: len(data) - len(bundle.checkpoint)].decode("ascii").split("\n")
    assert head[0] == HEADER
    assert f"index {bundle.index}" in head


def head(index: str = "7", proof: list[str] | None = None, extra: str | None = "AAAA") -> bytes:
    lines = [HEADER]
    if extra is not None:
        lines.append(f"extra {extra}")
    lines.append(f"index {index}")
    lines.extend(proof if proof is not None else [base64.b64encode(bytes(32)).decode()])
    return ("\n".join(lines) + "\n\n").encode() + b"checkpoint\n"


HASH = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (head().replace(HEADER.encode(), b"c2sp.org/tlog-proof@v2"), "bundle.header"),
        (head().replace(HEADER.encode(), b"c2sp.org/tlog-proof"), "bundle.header"),
        (head().replace(HEADER.encode(), HEADER.encode() + b" "), "bundle.header"),
        (b"\n" + head(), "bundle.header"),
        (head(index="01"), "bundle.index"),
        (head(index="+1"), "bundle.index"),
        (head(index="-1"), "bundle.index"),
        (head(index=""), "bundle.index"),
        (head(index=" 1"), "bundle.index"),
        (head(index="1 "), "bundle.index"),
        (head(index="0x1"), "bundle.index"),
        (head(index=str(1 << 63)), "bundle.index"),
        (head(index=str(1 << 64)), "bundle.index"),
        (head(index="9" * 5000), "bundle.index"),
        (head().replace(b"index 7", b"index  7"), "bundle.index"),
        (head().replace(b"index 7", b"Index 7"), "bundle.index"),
        (head().replace(b"index 7", b"index\t7"), "bundle.index"),
        (head().replace(b"extra AAAA\nindex 7", b"index 7\nextra AAAA"), "bundle.proof[0]"),
        (head(extra="AAA"), "bundle.extra"),
        (head(extra="AA=A"), "bundle.extra"),
        (head(extra="AB=="), "bundle.extra"),  # trailing bits set
        (head(extra="not base64"), "bundle.extra"),
        (head(proof=["not base64"]), "bundle.proof[0]"),
        (head(proof=[HASH, HASH.rstrip("=")]), "bundle.proof[1]"),
        (head(proof=[HASH[:-2] + "B="]), "bundle.proof[0]"),  # non-canonical
        (head(proof=[base64.b64encode(bytes(31)).decode()]), "bundle.proof"),
        (head(proof=[base64.b64encode(bytes(33)).decode()]), "bundle.proof"),
        (head(proof=[HASH] * (MAX_PROOF_LENGTH + 1)), "bundle.proof"),
        (head(proof=[HASH, "index 7"]), "bundle.proof[1]"),
        (head().replace(b"\n\n", b"\n"), "bundle"),
        (head().replace(b"\n", b"\r\n"), "bundle"),
        (head().split(b"\n\n")[0] + b"\n\n", "bundle.checkpoint"),
        (head().replace(b"extra AAAA", "extra \u00e9".encode()), "bundle"),
        (head() + b"x" * MAX_BUNDLE_SIZE, "bundle"),
        (b"", "bundle"),
    ],
)
def test_parse_bundle_rejects(data: bytes, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_bundle(data)
    assert exc.value.field == field


def test_parse_bundle_accepts_the_edges() -> None:
    assert parse_bundle(head(proof=[HASH] * MAX_PROOF_LENGTH)).proof == (bytes(range(32)),) * 64
    assert parse_bundle(head(proof=[])).proof == ()
    assert parse_bundle(head(extra="")).extra == b""
    assert parse_bundle(head(extra=None)).extra is None
    assert parse_bundle(head(index=str((1 << 63) - 1))).index == (1 << 63) - 1
    # The checkpoint is kept verbatim, blank lines and all.
    data = head().split(b"\n\n")[0] + b"\n\nline\n\n\x00\xff"
    assert parse_bundle(data).checkpoint == b"line\n\n\x00\xff"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"index": -1}, "bundle.index"),
        ({"index": 1 << 63}, "bundle.index"),
        ({"index": True}, "bundle.index"),
        ({"index": 1.0}, "bundle.index"),
        ({"proof": (bytes(32),) * (MAX_PROOF_LENGTH + 1)}, "bundle.proof"),
        ({"proof": (bytes(31),)}, "bundle.proof"),
        ({"checkpoint": b""}, "bundle.checkpoint"),
    ],
)
def test_proof_bundle_validates(changes: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {"index": 0, "proof": (), "checkpoint": b"cp", "extra": None}
    fields.update(changes)
    with pytest.raises(MalformedError) as exc:
        ProofBundle(**fields)
    assert exc.value.field == field
