"""The tlog errors cross a process boundary intact: every one survives pickling with its
type, message and evidence (a worker process raises them in its parent)."""

from __future__ import annotations

import pickle

import pytest

from tlog.errors import (
    InconsistentLogError,
    InvalidSignatureError,
    MalformedError,
    ProofError,
    TlogError,
    UnknownKeyError,
    ValidityError,
    VerificationError,
)

ERRORS = [
    MalformedError("range", "[3, 2) is not in a tree of 5"),
    VerificationError("GET /checkpoint: HTTP 404"),
    ProofError("tile/entries/001 does not match the tree", expected=b"\1" * 32,
               calculated=b"\2" * 32),
    ProofError("the proof is too long"),
    InconsistentLogError("no proof joins them", old_checkpoint=b"old\n", new_checkpoint=b"new\n",
                         proof=(b"\3" * 32,), prefix=b"\4" * 32),
    InvalidSignatureError("log.example", 0x1234ABCD),
    UnknownKeyError("no known key signed it"),
    ValidityError("expired", now_ms=3, valid_from_ms=1, valid_until_ms=2),
]  # fmt: skip


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_survives_pickling(error: TlogError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)
