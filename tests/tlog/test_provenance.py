"""Tests of tlog.provenance: the X-Provenance and X-Receipt header values, formatted and
parsed against each other (and by hypothesis), with one spelling each."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlog.errors import MalformedError
from tlog.provenance import (
    Provenance,
    ReceiptRef,
    format_provenance,
    format_receipt_ref,
    parse_provenance,
    parse_receipt_ref,
)

CONTENT = "sha256:" + "ab" * 32
MANIFEST = "sha256:" + "cd" * 32


def test_the_documented_shape() -> None:
    text = format_provenance(Provenance(CONTENT, "acct:alice@example.com", MANIFEST))
    assert text == f"v=1;id={CONTENT};creator=acct:alice@example.com;manifest={MANIFEST}"
    assert parse_provenance(text) == Provenance(CONTENT, "acct:alice@example.com", MANIFEST)
    ref = ReceiptRef("edge-fra1", "0f3a")
    assert format_receipt_ref(ref) == "edge=edge-fra1;request_id=0f3a"


ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"),
              min_size=1, max_size=40)  # fmt: skip
request_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                      max_size=128)  # fmt: skip


@given(creator=ids, content=st.binary(min_size=32, max_size=32))
def test_provenance_round_trips(creator: str, content: bytes) -> None:
    provenance = Provenance("sha256:" + content.hex(), creator, MANIFEST)
    text = format_provenance(provenance)
    assert text.isprintable() and " " not in text
    assert text.count(";") == 3
    assert parse_provenance(text) == provenance


@given(edge=ids, request_id=request_ids)
def test_receipt_ref_round_trips(edge: str, request_id: str) -> None:
    ref = ReceiptRef(edge, request_id)
    text = format_receipt_ref(ref)
    assert text.count(";") == 1 and text.count("=") == 2
    assert parse_receipt_ref(text) == ref


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f"v=2;id={CONTENT};creator=a;manifest={MANIFEST}", "provenance.v"),
        (f"id={CONTENT};v=1;creator=a;manifest={MANIFEST}", "provenance"),
        (f"v=1;id={CONTENT};creator=a", "provenance"),
        (f"v=1;id={CONTENT};creator=a;manifest={MANIFEST};x=1", "provenance"),
        (f"v=1; id={CONTENT};creator=a;manifest={MANIFEST}", "provenance"),
        (f"v=1;id=sha256:AB;creator=a;manifest={MANIFEST}", "provenance.id"),
        (f"v=1;id={CONTENT};creator=a%3b;manifest={MANIFEST}", "provenance.creator"),
        (f"v=1;id={CONTENT};creator=a%41;manifest={MANIFEST}", "provenance.creator"),
        (f"v=1;id={CONTENT};creator=;manifest={MANIFEST}", "provenance.creator"),
        (f"v=1;id={CONTENT};creator=a b;manifest={MANIFEST}", "provenance.creator"),
        ("v=1;" + "x" * 2000, "provenance"),
    ],
)
def test_bad_provenance_names_the_field(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_provenance(text)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("edge=e;request_id=", "receipt_ref.request_id"),
        ("request_id=r;edge=e", "receipt_ref"),
        ("edge=e", "receipt_ref"),
        ("edge=e+1;request_id=r", "receipt_ref.edge"),
        ("edge=e;request_id=r;x", "receipt_ref"),
        ("edge=e;request_id=a=b", "receipt_ref.request_id"),
    ],
)
def test_bad_receipt_ref_names_the_field(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_receipt_ref(text)
    assert exc.value.field == field
