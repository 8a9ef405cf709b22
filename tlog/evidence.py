"""Fork evidence: two signed checkpoints of one log that no consistency proof joins.

Owns :func:`verify_checkpoints_consistent` (the check a monitor or witness runs between the
checkpoint it trusts and a new one, raising :class:`~tlog.errors.InconsistentLogError` with
both notes and the proof) and the self-contained evidence file a monitor writes when that
check fails, with its strict parser and :func:`verify_fork_evidence`, which anyone can run
offline with the log's key. Imports tlog.checkpoint, tlog.proofs, tlog.parsing, tlog.note
and tlog.errors.

The file is::

    meterlog-fork-evidence/v1
    <base64 hash>                 0 to 65 lines: the consistency proof that fails
    <blank line>
    old <byte length>
    <the older signed checkpoint, verbatim>
    new <byte length>
    <the newer signed checkpoint, verbatim>

The notes are framed by their length because a signed note holds a blank line of its own.
"Older" is the smaller tree (or, for two roots of one size, the one trusted first).

>>> print(format_fork_evidence(ForkEvidence(b"A\\n", b"B\\n", (bytes(32),))).decode(), end="")
meterlog-fork-evidence/v1
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
<BLANKLINE>
old 2
A
new 2
B
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.errors import InconsistentLogError, MalformedError, ProofError, VerificationError
from tlog.note import MAX_NOTE_SIZE, Verifier
from tlog.parsing import check_hashes, encode_b64, parse_decimal, parse_hash_lines, split_head
from tlog.proofs import MAX_CONSISTENCY_PROOF_LENGTH, verify_consistency

__all__ = [
    "HEADER",
    "ForkEvidence",
    "format_fork_evidence",
    "parse_fork_evidence",
    "verify_checkpoints_consistent",
    "verify_fork_evidence",
]

HEADER = "meterlog-fork-evidence/v1"


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    """Both signed checkpoints (verbatim notes) and the consistency proof that failed."""

    old_checkpoint: bytes
    new_checkpoint: bytes
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for name, note in (("old", self.old_checkpoint), ("new", self.new_checkpoint)):
            if not note or len(note) > MAX_NOTE_SIZE:
                raise MalformedError(name, f"empty or over {MAX_NOTE_SIZE} bytes")
        check_hashes(self.proof, "proof", MAX_CONSISTENCY_PROOF_LENGTH)

    @classmethod
    def from_error(cls, error: InconsistentLogError) -> ForkEvidence:
        return cls(error.old_checkpoint, error.new_checkpoint, error.proof)


def format_fork_evidence(evidence: ForkEvidence) -> bytes:
    head = "\n".join([HEADER, *(encode_b64(h) for h in evidence.proof)]) + "\n\n"
    return b"".join(
        [
            head.encode(),
            f"old {len(evidence.old_checkpoint)}\n".encode(),
            evidence.old_checkpoint,
            f"new {len(evidence.new_checkpoint)}\n".encode(),
            evidence.new_checkpoint,
        ]
    )


def _framed(data: bytes, at: int, label: str) -> tuple[bytes, int]:
    end = data.find(b"\n", at)
    if end < 0:
        raise MalformedError(label, "missing")
    line = data[at:end].decode("ascii", errors="replace")
    if not line.startswith(label + " "):
        raise MalformedError(label, f"expected '{label} <length>', got {line[:40]!r}")
    length = parse_decimal(line[len(label) + 1 :], label, MAX_NOTE_SIZE)
    start = end + 1
    if start + length > len(data):
        raise MalformedError(label, "the checkpoint is truncated")
    return data[start : start + length], start + length


def parse_fork_evidence(data: bytes) -> ForkEvidence:
    """Parse an evidence file strictly: header, proof lines, blank line, both framed notes,
    and nothing after them."""
    lines, rest = split_head(data, "evidence")
    if lines[0] != HEADER:
        raise MalformedError("evidence.header", f"first line is not {HEADER}")
    proof = parse_hash_lines(lines[1:], "proof", MAX_CONSISTENCY_PROOF_LENGTH)
    old, at = _framed(data, len(data) - len(rest), "old")
    new, at = _framed(data, at, "new")
    if at != len(data):
        raise MalformedError("evidence", "trailing data after the new checkpoint")
    return ForkEvidence(old, new, proof)


def verify_checkpoints_consistent(
    old: SignedCheckpoint, new: SignedCheckpoint, proof: Sequence[bytes]
) -> None:
    """Check that ``old`` is a prefix of ``new`` by ``proof`` (empty for equal sizes).

    Raises InconsistentLogError (both notes, the proof) when it is not; MalformedError when
    the two are not checkpoints of one origin or ``old`` is the larger tree. The proof must
    come from hashes the caller authenticated against ``new`` (e.g. a TileHashReader),
    otherwise a failure may only mean the server sent a bad proof.
    """
    a, b = old.checkpoint, new.checkpoint
    if a.origin != b.origin:
        raise MalformedError("origin", f"{a.origin!r} and {b.origin!r} are different logs")
    if a.tree_size > b.tree_size:
        raise MalformedError("old", f"size {a.tree_size} is larger than {b.tree_size}")
    try:
        verify_consistency(a.tree_size, b.tree_size, proof, a.root_hash, b.root_hash)
    except ProofError as exc:
        raise InconsistentLogError(
            f"checkpoints of sizes {a.tree_size} and {b.tree_size} are inconsistent: {exc}",
            old_checkpoint=old.signed_note,
            new_checkpoint=new.signed_note,
            proof=tuple(proof),
        ) from exc


def verify_fork_evidence(
    evidence: ForkEvidence, log_keys: Sequence[Verifier]
) -> tuple[SignedCheckpoint, SignedCheckpoint]:
    """Check that ``evidence`` shows a fork: both checkpoints are signed by a log key, are of
    one origin, and are not joined by its proof. Returns the two opened checkpoints; raises
    VerificationError if it is not evidence of a fork (a signature does not verify, or the
    proof does join them)."""
    old = open_checkpoint(evidence.old_checkpoint, log_keys)
    new = open_checkpoint(evidence.new_checkpoint, log_keys)
    try:
        verify_checkpoints_consistent(old, new, evidence.proof)
    except InconsistentLogError:
        return old, new
    raise VerificationError("not a fork: the proof shows the checkpoints are consistent")
