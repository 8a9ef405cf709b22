"""C2SP tlog-proof bundles: an entry's offline proof of inclusion under a signed checkpoint.

Owns the ``.tlog-proof`` text format of https://c2sp.org/tlog-proof and its full
verification. Imports tlog.checkpoint, tlog.proofs, tlog.hashing, tlog.note, tlog.parsing and
tlog.errors.

A bundle is::

    c2sp.org/tlog-proof@v1
    extra <base64 of the entry's bytes>        (meterlog always writes it)
    index <leaf index>
    <base64 hash>                              (the inclusion proof, leaf sibling first)
    ...
    <blank line>
    <the signed checkpoint, verbatim, with any witness cosignatures>

The spec leaves ``extra`` to the application; meterlog puts the logged entry there, which is
exactly the "additional data necessary to reconstruct the record hash" it was made for. It
is not trusted on its own: :func:`verify_bundle` hashes it into the leaf and checks that leaf
against the checkpoint's root, so a bundle that verifies proves those very bytes are logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.errors import MalformedError
from tlog.hashing import HASH_SIZE, leaf_hash
from tlog.note import Verifier
from tlog.parsing import decode_b64, encode_b64, parse_decimal
from tlog.proofs import MAX_PROOF_LENGTH, verify_inclusion

__all__ = [
    "HEADER",
    "ProofBundle",
    "VerifiedBundle",
    "format_bundle",
    "parse_bundle",
    "verify_bundle",
    "verify_bundle_inclusion",
]

HEADER = "c2sp.org/tlog-proof@v1"
MAX_BUNDLE_SIZE = 2 << 20
"""A bundle holds at most a 1 MiB note, a 64 KiB entry and 64 hashes: 2 MiB is generous."""


@dataclass(frozen=True, slots=True)
class ProofBundle:
    """The parts of a ``.tlog-proof``; nothing in it is trusted until :func:`verify_bundle`."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    """The signed checkpoint note, verbatim."""
    extra: bytes | None = None
    """Application data; in meterlog, the logged entry."""

    def __post_init__(self) -> None:
        index = self.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1 << 63:
            raise MalformedError("bundle.index", f"{index!r} is not an integer in 0..2**63-1")
        if len(self.proof) > MAX_PROOF_LENGTH:
            raise MalformedError("bundle.proof", f"more than {MAX_PROOF_LENGTH} hashes")
        for h in self.proof:
            if len(h) != HASH_SIZE:
                raise MalformedError("bundle.proof", f"a hash is not {HASH_SIZE} bytes")
        if not self.checkpoint:
            raise MalformedError("bundle.checkpoint", "missing")


def format_bundle(bundle: ProofBundle) -> bytes:
    lines = [HEADER]
    if bundle.extra is not None:
        lines.append(f"extra {encode_b64(bundle.extra)}")
    lines.append(f"index {bundle.index}")
    lines.extend(encode_b64(h) for h in bundle.proof)
    return ("\n".join(lines) + "\n\n").encode() + bundle.checkpoint


def parse_bundle(data: bytes) -> ProofBundle:
    """Parse a ``.tlog-proof`` strictly (header, canonical index, 32-byte hashes, a checkpoint)."""
    if len(data) > MAX_BUNDLE_SIZE:
        raise MalformedError("bundle", f"larger than {MAX_BUNDLE_SIZE} bytes")
    head, sep, checkpoint = data.partition(b"\n\n")
    if not sep:
        raise MalformedError("bundle", "no blank line before the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise MalformedError("bundle", "the proof part is not ASCII") from exc
    if lines[0] != HEADER:
        raise MalformedError("bundle.header", f"first line is not {HEADER}")
    at = 1
    extra = None
    if at < len(lines) and lines[at].startswith("extra "):
        extra = decode_b64(lines[at][len("extra ") :], "bundle.extra")
        at += 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise MalformedError("bundle.index", "missing 'index <n>' line")
    index = parse_decimal(lines[at][len("index ") :], "bundle.index")
    proof_lines = lines[at + 1 :]
    if len(proof_lines) > MAX_PROOF_LENGTH:
        raise MalformedError("bundle.proof", f"more than {MAX_PROOF_LENGTH} hashes")
    proof = tuple(decode_b64(line, f"bundle.proof[{i}]") for i, line in enumerate(proof_lines))
    return ProofBundle(index, proof, checkpoint, extra)


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """What :func:`verify_bundle` established: these entry bytes are at this index."""

    entry: bytes
    index: int
    leaf_hash: bytes
    checkpoint: SignedCheckpoint


def verify_bundle(
    bundle: ProofBundle,
    log_keys: Sequence[Verifier],
    *,
    entry: bytes | None = None,
    origin: str | None = None,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> VerifiedBundle:
    """Verify a bundle in full: the checkpoint's signature by a log key, the witness quorum,
    and the inclusion of the entry (``entry``, or the bundle's ``extra``) at its index.

    Raises VerificationError (or MalformedError); never returns an unverified result.
    """
    signed = open_checkpoint(
        bundle.checkpoint, log_keys, origin=origin, witnesses=witnesses, quorum=quorum
    )
    return verify_bundle_inclusion(bundle, signed, entry=entry)


def verify_bundle_inclusion(
    bundle: ProofBundle, signed: SignedCheckpoint, *, entry: bytes | None = None
) -> VerifiedBundle:
    """The inclusion half of :func:`verify_bundle`, for a checkpoint already opened from
    ``bundle.checkpoint`` (callers that report each step separately open it themselves)."""
    if signed.signed_note != bundle.checkpoint:
        raise MalformedError("bundle.checkpoint", "is not the checkpoint that was opened")
    data = entry if entry is not None else bundle.extra
    if data is None:
        raise MalformedError("bundle.extra", "no entry given and none in the bundle")
    checkpoint = signed.checkpoint
    leaf = leaf_hash(data)
    verify_inclusion(leaf, bundle.index, checkpoint.tree_size, bundle.proof, checkpoint.root_hash)
    return VerifiedBundle(data, bundle.index, leaf, signed)
