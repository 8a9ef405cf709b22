"""Tests of tlog.parsing: the canonical-decimal and strict-base64 rules every format shares."""

from __future__ import annotations

import base64

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tlog.errors import MalformedError
from tlog.parsing import MAX_INT63, decode_b64, encode_b64, parse_decimal

# ---------------------------------------------------------------------------------------------
# parse_decimal


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=MAX_INT63))
def test_parse_decimal_round_trips_every_int63(value: int) -> None:
    assert parse_decimal(str(value), "size") == value


def test_parse_decimal_accepts_the_bounds() -> None:
    assert parse_decimal("0", "size") == 0
    assert parse_decimal(str(MAX_INT63), "size") == MAX_INT63
    assert parse_decimal("255", "w", maximum=255) == 255


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00",
        "01",
        "007",
        "-0",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "1_000",
        "1,000",
        "0x10",
        "1e3",
        "1.0",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() but not ASCII
        "\uff11",  # FULLWIDTH DIGIT ONE
        "\u00b2",  # SUPERSCRIPT TWO
        "1\u0660",
    ],
)
def test_parse_decimal_rejects_non_canonical_text(text: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_decimal(text, "checkpoint.tree_size")
    assert exc.value.field == "checkpoint.tree_size"


@pytest.mark.parametrize("value", [MAX_INT63 + 1, 1 << 64, 10**19, 10**30])
def test_parse_decimal_rejects_values_over_int63(value: int) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_decimal(str(value), "index")
    assert exc.value.field == "index"


def test_parse_decimal_respects_a_smaller_maximum() -> None:
    with pytest.raises(MalformedError):
        parse_decimal("256", "tile.width", maximum=255)
    with pytest.raises(MalformedError):
        parse_decimal("1000", "tile.width", maximum=255)


@pytest.mark.parametrize("digits", [4300, 4301, 5000, 100_000])
def test_parse_decimal_rejects_huge_numbers_as_malformed(digits: int) -> None:
    # int() refuses strings over 4300 digits with a plain ValueError; the parser must still
    # raise its own MalformedError naming the field.
    with pytest.raises(MalformedError) as exc:
        parse_decimal("9" * digits, "size")
    assert exc.value.field == "size"


def test_parse_decimal_rejects_huge_numbers_with_leading_zeros() -> None:
    with pytest.raises(MalformedError, match="canonical"):
        parse_decimal("0" * 5000 + "1", "size")


# ---------------------------------------------------------------------------------------------
# decode_b64 / encode_b64


@settings(max_examples=200)
@given(st.binary(max_size=100))
def test_b64_round_trip(data: bytes) -> None:
    text = encode_b64(data)
    assert text == base64.b64encode(data).decode()
    assert decode_b64(text, "f") == data


@pytest.mark.parametrize(
    "text",
    [
        "YQ",  # missing padding
        "YQ=",  # short padding
        "YQ===",  # extra padding
        "YR==",  # non-canonical: trailing bits set (canonical is YQ==)
        "YWI=" + "YQ==",  # padding in the middle
        "YW=I",
        "Y Q==",
        " YQ==",
        "YQ==\n",
        "YQ==\r",
        "-_-_",  # URL-safe alphabet
        "YQ==é",
        "\u0661\u0662\u0663\u0664",
        "=",
        "====",
        "A",
        "AB=C",
    ],
)
def test_decode_b64_rejects_non_canonical_or_invalid_text(text: str) -> None:
    with pytest.raises(MalformedError) as exc:
        decode_b64(text, "checkpoint.root_hash")
    assert exc.value.field == "checkpoint.root_hash"


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=40), st.data())
def test_decode_b64_rejects_set_padding_bits(data: bytes, draw: st.DataObject) -> None:
    text = encode_b64(data)
    assume(text.endswith("="))
    # The last symbol before the padding carries unused low bits; set one of them.
    pad = len(text) - len(text.rstrip("="))
    unused_bits = 4 if pad == 2 else 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(text[-pad - 1])
    bit = draw.draw(st.integers(min_value=0, max_value=unused_bits - 1))
    mangled = text[: -pad - 1] + alphabet[last | (1 << bit)] + "=" * pad
    assert base64.b64decode(mangled) == data  # lenient decoders accept it ...
    with pytest.raises(MalformedError):  # ... the strict one does not
        decode_b64(mangled, "f")


def test_decode_b64_empty_is_empty() -> None:
    assert decode_b64("", "f") == b""
