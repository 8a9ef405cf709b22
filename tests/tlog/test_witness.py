"""tlog.witness: the add-checkpoint body, the 409 size body, cosignature lines, merging."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from tlog.errors import MalformedError
from tlog.hashing import EMPTY_ROOT
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_signature_line
from tlog.witness import (
    AddCheckpoint,
    format_add_checkpoint,
    format_size_body,
    merge_signatures,
    origin_hash,
    parse_add_checkpoint,
    parse_signature_lines,
    parse_size_body,
    signature_key,
)

LOG = SigningKey("log.example/w", b"\x01" * 32)
WITNESS = SigningKey("witness.example/w1", b"\x02" * 32)
OTHER = SigningKey("witness.example/w2", b"\x03" * 32)
NOTE = sign_checkpoint(Checkpoint("log.example/w", 5, b"\x07" * 32), [LOG.signer()])


def test_the_c2sp_example_body_parses_and_round_trips(vectors: dict[str, Any]) -> None:
    body = vectors["tlog_witness_examples"]["add_checkpoint_request_body"].encode()
    request = parse_add_checkpoint(body)
    assert request.old_size == 20852014 and len(request.proof) == 4
    assert request.checkpoint.startswith(b"example.com/behind-the-sofa\n20852163\n")
    assert format_add_checkpoint(request) == body


def test_the_origin_hash_of_the_spec() -> None:
    assert origin_hash("example.com/behind-the-sofa") == (
        "5fd2dc0beb4ce54da5050cf6d5c75248b023abad441c3cecde3976fbe9da4fe4"
    )


@given(
    st.integers(0, (1 << 63) - 1),
    st.lists(st.binary(min_size=32, max_size=32), max_size=65),
    st.binary(min_size=1, max_size=300),
)
def test_format_and_parse_are_inverse(old: int, proof: list[bytes], note: bytes) -> None:
    request = AddCheckpoint(old, tuple(proof), note)
    assert parse_add_checkpoint(format_add_checkpoint(request)) == request


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"old 1\nno blank line at all\n", "body"),
        (b"old 1\n" + NOTE, "proof[0]"),  # the checkpoint's text read as proof lines
        (b"old 01\n\n" + NOTE, "old"),
        (b"old -1\n\n" + NOTE, "old"),
        (b"Old 1\n\n" + NOTE, "old"),
        (b"old 1\nnot base64!\n\n" + NOTE, "proof[0]"),
        (b"old 1\n" + b"AAAA\n" + b"\n" + NOTE, "proof"),  # a 3-byte "hash"
        (
            b"old 1\n" + b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" * 66 + b"\n" + NOTE,
            "proof",
        ),
        (b"old 1\n\n", "checkpoint"),
        (b"old \xff\n\n" + NOTE, "body"),
    ],
)
def test_malformed_bodies_name_the_part(body: bytes, field: str) -> None:
    with pytest.raises(MalformedError) as caught:
        parse_add_checkpoint(body)
    assert caught.value.field == field


def test_size_bodies() -> None:
    assert format_size_body(0) == b"0\n"
    assert parse_size_body(b"42\n") == 42
    for bad in (b"42", b"042\n", b"4 2\n", b"\xff\n", b"\n"):
        with pytest.raises(MalformedError):
            parse_size_body(bad)


def _cosignature(key: SigningKey, timestamp_s: int) -> str:
    text = NOTE[: NOTE.rfind(b"\n\n") + 1].decode()
    return format_signature_line(text, key.cosigner(timestamp_s)).removesuffix("\n")


def test_cosignature_lines_merge_into_a_note_that_verifies() -> None:
    line = _cosignature(WITNESS, 1_700_000_000)
    assert parse_signature_lines((line + "\n").encode()) == (line,)
    witness = WITNESS.verifier(ALG_COSIGNATURE_V1)
    assert signature_key(line) == (witness.name, witness.key_id)
    merged = merge_signatures(NOTE, [line])
    signed = open_checkpoint(merged, [LOG.verifier()], witnesses=[witness], quorum=1)
    assert signed.witnesses == (witness,)
    # A newer cosignature by the same key replaces the older; another witness's is added.
    newer = _cosignature(WITNESS, 1_700_000_100)
    twice = merge_signatures(merged, [newer, _cosignature(OTHER, 1)])
    lines = twice.decode().split("\n\n", 1)[1].splitlines()
    assert lines[0].startswith("— log.example/w ") and lines[1:] == [
        newer,
        _cosignature(OTHER, 1),
    ]
    assert merge_signatures(twice, []) == twice


@pytest.mark.parametrize(
    "body",
    [b"", b"\xe2\x80\x94 w x\n", b"- w AAAAAAAA\n", b"\xe2\x80\x94 w AAAAAAAA", b"\xff\n", b"\n"],
)
def test_bad_cosignature_answers_are_rejected(body: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_signature_lines(body)


def test_empty_tree_checkpoints_have_the_empty_root() -> None:
    with pytest.raises(MalformedError):
        Checkpoint("log.example/w", 0, b"\x01" * 32)
    assert Checkpoint("log.example/w", 0, EMPTY_ROOT).tree_size == 0
