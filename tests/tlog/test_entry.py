"""Tests of tlog.entry: RFC 8785 canonical JSON, strict decoding with the field named, and the
``receipt`` and ``edge_key`` kinds (signing, verification, validation, round trips).

The RFC 8785 vectors are cyberphone/json-canonicalization ``testdata`` (the RFC author's
reference set), quoted inline with their file names; the rest is checked against hypothesis
strategies of valid entries.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tlog.entry
from tlog.entry import (
    CACHE_STATUSES,
    EDGE_KEY_ACTIONS,
    MAX_ENTRY_SIZE,
    MAX_SAFE_INTEGER,
    SCOPES,
    EdgeKey,
    Receipt,
    canonical_json,
    decode_entry,
    encode_entry,
    parse_canonical_json,
    sign_edge_key,
    sign_receipt,
    signed_message,
    verify_edge_key,
    verify_receipt,
)
from tlog.errors import InvalidSignatureError, MalformedError, UnknownKeyError
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_vkey
from tlog.parsing import encode_b64


@pytest.fixture(scope="module", autouse=True, params=["orjson", "stdlib"])
def json_codec(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs twice: with orjson (the log server's accelerator) encoding and
    parsing entries, and with the standard library alone (a verifier's install)."""
    installed = tlog.entry._orjson
    if request.param == "orjson" and installed is None:
        pytest.fail("orjson is not installed: the tests need it (the dev and server extras)")
    if request.param == "stdlib":
        tlog.entry._orjson = None
    try:
        yield request.param
    finally:
        tlog.entry._orjson = installed


EDGE = SigningKey("edge-fra-1", bytes(range(32)))
OPERATOR = SigningKey("operator.example.com", bytes(range(100, 132)))
DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


def receipt(**changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "request_id": "req-0001",
        "edge": EDGE.name,
        "consumer_id": "consumer-7",
        "token_id": "tok-3",
        "scope": "training",
        "content_id": DIGEST_A,
        "creator_id": "creator-42",
        "manifest": DIGEST_B,
        "bytes_sent": 123_456,
        "cache": "hit",
        "served_at_ms": 1_700_000_000_000,
    }
    fields.update(changes)
    return Receipt(**fields)


def edge_key(**changes: Any) -> EdgeKey:
    fields: dict[str, Any] = {
        "action": "register",
        "edge": EDGE.name,
        "key": format_vkey(EDGE.verifier()),
        "valid_from_ms": 1_700_000_000_000,
    }
    fields.update(changes)
    return EdgeKey(**fields)


SIGNED_RECEIPT = sign_receipt(receipt(job_id="job-9", sample_rate=(1, 10)), EDGE)
SIGNED_EDGE_KEY = sign_edge_key(edge_key(valid_until_ms=1_800_000_000_000), OPERATOR)

REMOVE = object()


def mutate(entry: Receipt | EdgeKey, **changes: Any) -> bytes:
    """The entry's canonical leaf bytes with fields changed (or REMOVEd) at the JSON level."""
    obj = json.loads(encode_entry(entry))
    for name, value in changes.items():
        if value is REMOVE:
            del obj[name]
        else:
            obj[name] = value
    return canonical_json(obj)


def field_of(data: bytes) -> str:
    with pytest.raises(MalformedError) as exc:
        decode_entry(data)
    return exc.value.field


# ---------------------------------------------------------------------------------------------
# Canonical JSON.


def test_rfc8785_weird_vector() -> None:
    # cyberphone/json-canonicalization testdata/input/weird.json and output/weird.json: keys
    # sorted by UTF-16 code units, so U+1F602 (D83D DE02) sorts before U+FB33.
    weird = (
        '{\n  "\\u20ac": "Euro Sign",\n  "1": "One",\n  "\\u0080": "Control\\u007f",\n'
        '  "\\ud83d\\ude02": "Smiley",\n  "\\u00f6": "Latin Small Letter O With Diaeresis",\n'
        '  "\\ufb33": "Hebrew Letter Dalet With Dagesh",\n  "</script>": "Browser Challenge"\n}\n'
    )
    want = (
        '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f602":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode()
    assert canonical_json(json.loads(weird)) == want
    assert parse_canonical_json(want) == json.loads(weird)


def test_rfc8785_escaping_vector() -> None:
    # cyberphone/json-canonicalization testdata/{input,output}/values.json, the members
    # meterlog allows (no numbers but integers, no null).
    value = json.loads(r'{"escaping": "\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/"}')
    want = '{"escaping":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'.encode()
    assert canonical_json(value) == want
    assert parse_canonical_json(want) == value
    assert canonical_json({"literals": [True, False]}) == b'{"literals":[true,false]}'


def test_rfc8785_structures_vector() -> None:
    # cyberphone/json-canonicalization testdata/{input,output}/structures.json, with the one
    # float (56.0) written as the integer it canonicalises to.
    structures = (
        '{\n  "1": {"f": {"f": "hi","F": 5} ,"\\n": 56},\n  "10": { },\n  "": "empty",\n'
        '  "a": { },\n  "111": [ { } ],\n  "A": { }\n}'
    )
    want = b'{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{}],"A":{},"a":{}}'
    assert canonical_json(json.loads(structures)) == want
    with pytest.raises(MalformedError):
        parse_canonical_json(structures.encode())


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    astral, bmp = "\U0001f600", "\uff21"  # UTF-16: D83D DE00 < FF21; code points: the reverse
    assert sorted([astral, bmp]) == [bmp, astral]
    data = canonical_json({bmp: 1, astral: 2, "a": 3})
    assert data == f'{{"a":3,"{astral}":2,"{bmp}":1}}'.encode()
    code_point_order = f'{{"a":3,"{bmp}":1,"{astral}":2}}'.encode()
    with pytest.raises(MalformedError):
        parse_canonical_json(code_point_order)


def test_control_characters_are_escaped_the_ecmascript_way() -> None:
    for code in range(0x20):
        data = canonical_json({"s": chr(code)})
        short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
        escape = short.get(code, f"\\u{code:04x}")
        assert data == f'{{"s":"{escape}"}}'.encode()
        assert parse_canonical_json(data) == {"s": chr(code)}
    # Nothing else is escaped: DEL, C1 controls, U+2028/2029, non-ASCII all go out as UTF-8.
    for char in "\x7f\x80\u2028\u2029\u00e9/<>&'":
        assert canonical_json({"s": char}) == f'{{"s":"{char}"}}'.encode()


json_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_json_round_trip(value: dict[str, Any]) -> None:
    data = canonical_json(value)
    assert parse_canonical_json(data) == value
    assert json.loads(data) == value
    keys = list(json.loads(data))
    assert keys == sorted(keys, key=lambda k: k.encode("utf-16-be"))
    # Re-serialised with any other whitespace or key order, it is not canonical.
    spaced = json.dumps(value, ensure_ascii=False, indent=1).encode()
    if spaced != data:
        with pytest.raises(MalformedError):
            parse_canonical_json(spaced)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"a":1.5}', "entry.a"),
        (b'{"a":1.0}', "entry.a"),
        (b'{"a":1e3}', "entry.a"),
        (b'{"a":1E3}', "entry.a"),
        (b'{"a":-0.0}', "entry.a"),
        (b'{"a":NaN}', "entry"),
        (b'{"a":Infinity}', "entry"),
        (b'{"a":-Infinity}', "entry"),
        (b'{"a":{"b":[1,2.5]}}', "entry.a.b[1]"),
        (b'{"a":9007199254740992}', "entry.a"),  # 2**53
        (b'{"a":-9007199254740992}', "entry.a"),
        (b'{"a":{"b":[1,9007199254740992]}}', "entry.a.b[1]"),
        (b'{"a":1' + b"0" * 5000 + b"}", "entry"),
        (b'{"a":1,"a":1}', "entry.a"),
        (b'{"a":1,"a":2}', "entry.a"),
        (b'{"a":{"b":1,"b":1}}', "entry.b"),
        (b'{"a": 1}', "entry"),
        (b' {"a":1}', "entry"),
        (b'{"a":1}\n', "entry"),
        (b'{\n"a":1}', "entry"),
        (b'{"b":1,"a":2}', "entry"),
        (b'{"a":-0}', "entry"),
        (b'{"a":01}', "entry"),
        (b'{"a":"\\u0041"}', "entry"),
        (b'{"a":"\\/"}', "entry"),
        (b'{"a":"\\u00e9"}', "entry"),
        (b'{"a":"\xff"}', "entry"),
        (b'{"a":"\xc3"}', "entry"),
        (b'{"a":"\xed\xa0\x80"}', "entry"),  # a UTF-8-encoded surrogate
        (b'{"a":"\\ud800"}', "entry"),  # a lone surrogate, escaped
        (b'{"a":"\\udc00x"}', "entry"),
        (b'{"\\ud800":1}', "entry"),
        (b'{"a":null}', "entry.a"),
        (b"[1]", "entry"),
        (b"1", "entry"),
        (b'"a"', "entry"),
        (b"", "entry"),
        (b"{", "entry"),
        (b"[" * 100_000, "entry"),
        ("\ufeff{}".encode(), "entry"),
    ],
)
def test_parse_canonical_json_rejects(data: bytes, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_canonical_json(data)
    assert exc.value.field == field
    with pytest.raises(MalformedError) as exc:
        parse_canonical_json(data, "bundle.extra")
    assert exc.value.field == "bundle.extra" + field.removeprefix("entry")
    with pytest.raises(MalformedError):
        decode_entry(data)


def test_parse_canonical_json_accepts_the_integer_bounds() -> None:
    data = b'{"a":-9007199254740991,"b":9007199254740991}'
    assert parse_canonical_json(data) == {"a": -MAX_SAFE_INTEGER, "b": MAX_SAFE_INTEGER}


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1.0},
        {"a": math.nan},
        {"a": None},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {1: "a"},
        {"a": MAX_SAFE_INTEGER + 1},
        {"a": "\ud800"},
        {"\udfff": 1},
    ],
)
def test_canonical_json_rejects(value: Any) -> None:
    with pytest.raises(MalformedError):
        canonical_json(value)


# ---------------------------------------------------------------------------------------------
# Receipts: signing and verification.


def test_receipt_sign_and_verify() -> None:
    unsigned = receipt()
    signed = sign_receipt(unsigned, EDGE)
    assert signed.key_id == f"{EDGE.verifier().key_id:08x}"
    assert len(signed.signature) == 64
    verify_receipt(signed, EDGE.verifier())
    assert dataclasses.replace(signed, key_id="", signature=b"") == unsigned
    with pytest.raises(MalformedError):
        sign_receipt(receipt(edge="edge-other"), EDGE)


RECEIPT_TAMPERS: dict[str, list[Any]] = {
    "request_id": ["req-0002"],
    "consumer_id": ["consumer-8"],
    "token_id": ["tok-4"],
    "job_id": [None, "job-10"],
    "scope": ["inference", "preview"],
    "content_id": [DIGEST_B],
    "creator_id": ["creator-43"],
    "manifest": [DIGEST_A],
    "bytes_sent": [123_457, 0],
    "cache": ["miss"],
    "served_at_ms": [1_700_000_000_001],
    "sample_rate": [(1, 1), (1, 11), (3, 10)],
}


def test_tampering_any_signed_field_breaks_the_receipt() -> None:
    assert set(RECEIPT_TAMPERS) | {"edge", "key_id", "signature", "logged_at_ms"} == {
        f.name for f in dataclasses.fields(Receipt)
    }
    for name, values in RECEIPT_TAMPERS.items():
        for value in values:
            tampered = dataclasses.replace(SIGNED_RECEIPT, **{name: value})
            with pytest.raises(InvalidSignatureError):
                verify_receipt(tampered, EDGE.verifier())
            # ... also after a trip through the leaf bytes.
            with pytest.raises(InvalidSignatureError):
                verify_receipt(decode_entry(encode_entry(tampered)), EDGE.verifier())
    for at in range(64):
        signature = bytearray(SIGNED_RECEIPT.signature)
        signature[at] ^= 0x01
        tampered = dataclasses.replace(SIGNED_RECEIPT, signature=bytes(signature))
        with pytest.raises(InvalidSignatureError):
            verify_receipt(tampered, EDGE.verifier())


def test_a_receipt_names_its_key() -> None:
    # The identity fields pick the key: changed, the key given is not the one named.
    with pytest.raises(UnknownKeyError):
        verify_receipt(dataclasses.replace(SIGNED_RECEIPT, edge="edge-fra-2"), EDGE.verifier())
    with pytest.raises(UnknownKeyError):
        verify_receipt(dataclasses.replace(SIGNED_RECEIPT, key_id="00000000"), EDGE.verifier())
    with pytest.raises(UnknownKeyError):
        verify_receipt(dataclasses.replace(SIGNED_RECEIPT, key_id=""), EDGE.verifier())
    # Same name, another key: unknown. Another edge's key: unknown.
    with pytest.raises(UnknownKeyError):
        verify_receipt(SIGNED_RECEIPT, SigningKey(EDGE.name, bytes(32)).verifier())
    with pytest.raises(UnknownKeyError):
        verify_receipt(SIGNED_RECEIPT, OPERATOR.verifier())
    # The right public key as a cosigner key is not an entry key at all.
    with pytest.raises(MalformedError):
        verify_receipt(SIGNED_RECEIPT, EDGE.verifier(ALG_COSIGNATURE_V1))
    # Named, but not signed.
    with pytest.raises(MalformedError):
        verify_receipt(dataclasses.replace(SIGNED_RECEIPT, signature=b""), EDGE.verifier())


def test_logged_at_is_outside_the_signature() -> None:
    logged = dataclasses.replace(SIGNED_RECEIPT, logged_at_ms=1_700_000_000_500)
    verify_receipt(logged, EDGE.verifier())
    data = encode_entry(logged)
    assert data != encode_entry(SIGNED_RECEIPT)
    assert b'"logged_at_ms":1700000000500' in data
    decoded = decode_entry(data)
    assert decoded == logged
    assert isinstance(decoded, Receipt)
    verify_receipt(decoded, EDGE.verifier())
    assert "logged_at_ms" not in logged.signed_fields()
    assert "signature" not in logged.signed_fields()


# ---------------------------------------------------------------------------------------------
# Receipts: the leaf bytes.


def test_receipt_leaf_bytes() -> None:
    data = encode_entry(SIGNED_RECEIPT)
    assert data == canonical_json(json.loads(data))
    obj = json.loads(data)
    assert obj["kind"] == "receipt"
    assert obj["sample_rate"] == [1, 10]
    assert decode_entry(data) == SIGNED_RECEIPT
    assert encode_entry(decode_entry(data)) == data
    with pytest.raises(MalformedError):
        encode_entry(receipt())  # unsigned


RECEIPT_REQUIRED = [
    "request_id",
    "edge",
    "key_id",
    "consumer_id",
    "token_id",
    "scope",
    "content_id",
    "creator_id",
    "manifest",
    "bytes_sent",
    "cache",
    "served_at_ms",
    "sample_rate",
    "signature",
]


@pytest.mark.parametrize("name", RECEIPT_REQUIRED)
def test_receipt_missing_field_is_named(name: str) -> None:
    assert field_of(mutate(SIGNED_RECEIPT, **{name: REMOVE})) == f"receipt.{name}"


def test_receipt_optional_fields_may_be_absent() -> None:
    data = mutate(SIGNED_RECEIPT, job_id=REMOVE)
    decoded = decode_entry(data)
    assert isinstance(decoded, Receipt)
    assert decoded.job_id is None
    assert encode_entry(decoded) == data


@pytest.mark.parametrize("name", ["zzz", "aaa", "Kind", "signature2", "logged_at"])
def test_receipt_unknown_field_is_named(name: str) -> None:
    assert field_of(mutate(SIGNED_RECEIPT, **{name: 1})) == f"receipt.{name}"


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("bytes_sent", True, "receipt.bytes_sent"),
        ("bytes_sent", False, "receipt.bytes_sent"),
        ("bytes_sent", "123", "receipt.bytes_sent"),
        ("bytes_sent", -1, "receipt.bytes_sent"),
        ("bytes_sent", [1], "receipt.bytes_sent"),
        ("served_at_ms", True, "receipt.served_at_ms"),
        ("served_at_ms", "1700000000000", "receipt.served_at_ms"),
        ("logged_at_ms", True, "receipt.logged_at_ms"),
        ("logged_at_ms", "1", "receipt.logged_at_ms"),
        ("logged_at_ms", -5, "receipt.logged_at_ms"),
        ("edge", 5, "receipt.edge"),
        ("edge", True, "receipt.edge"),
        ("edge", ["edge-fra-1"], "receipt.edge"),
        ("edge", "edge fra", "receipt.edge"),
        ("edge", "edge+fra", "receipt.edge"),
        ("request_id", {}, "receipt.request_id"),
        ("request_id", "r" * 129, "receipt.request_id"),
        ("key_id", 5, "receipt.key_id"),
        ("key_id", "C0FFEE00", "receipt.key_id"),
        ("key_id", "", "receipt.key_id"),
        ("edge", "e" * 256, "receipt.edge"),
        ("job_id", 9, "receipt.job_id"),
        ("job_id", "", "receipt.job_id"),
        ("scope", "everything", "receipt.scope"),
        ("scope", 1, "receipt.scope"),
        ("cache", "HIT", "receipt.cache"),
        ("content_id", DIGEST_A.upper(), "receipt.content_id"),
        ("content_id", DIGEST_A[:-1], "receipt.content_id"),
        ("manifest", "sha512:" + "a" * 64, "receipt.manifest"),
        ("sample_rate", "1/10", "receipt.sample_rate"),
        ("sample_rate", [1], "receipt.sample_rate"),
        ("sample_rate", [1, 10, 1], "receipt.sample_rate"),
        ("sample_rate", {"n": 1}, "receipt.sample_rate"),
        ("sample_rate", [True, 10], "receipt.sample_rate[0]"),
        ("sample_rate", [1, "10"], "receipt.sample_rate[1]"),
        ("sample_rate", [0, 10], "receipt.sample_rate[0]"),
        ("signature", 5, "receipt.signature"),
        ("signature", "", "receipt.signature"),
        ("signature", "not base64", "receipt.signature"),
        ("signature", "AAAA", "receipt.signature"),
        ("kind", "edge-key", "entry.kind"),
        ("kind", 1, "entry.kind"),
        ("kind", REMOVE, "entry.kind"),
    ],
)
def test_receipt_wrong_values_are_named(name: str, value: Any, field: str) -> None:
    assert field_of(mutate(SIGNED_RECEIPT, **{name: value})) == field


def test_entry_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    base = len(mutate(SIGNED_RECEIPT, zzz=""))
    padding = MAX_ENTRY_SIZE - base
    at_limit = mutate(SIGNED_RECEIPT, zzz="x" * padding)
    assert len(at_limit) == MAX_ENTRY_SIZE == 65_535
    # At the limit the entry is parsed (and fails on its unknown field) ...
    assert field_of(at_limit) == "receipt.zzz"
    # ... one byte more and it is refused before parsing.
    over = mutate(SIGNED_RECEIPT, zzz="x" * (padding + 1))
    assert field_of(over) == "entry"
    assert field_of(b"{" + b" " * MAX_ENTRY_SIZE) == "entry"
    # No valid receipt reaches the limit, so the encoder's check is shown with a lower one.
    data = encode_entry(SIGNED_RECEIPT)
    monkeypatch.setattr(tlog.entry, "MAX_ENTRY_SIZE", len(data))
    assert encode_entry(SIGNED_RECEIPT) == data
    monkeypatch.setattr(tlog.entry, "MAX_ENTRY_SIZE", len(data) - 1)
    with pytest.raises(MalformedError):
        encode_entry(SIGNED_RECEIPT)


@pytest.mark.parametrize(
    ("rate", "ok"),
    [
        ((1, 1), True),
        ((1, 2), True),
        ((3, 7), True),
        ((1, 1 << 32), True),
        (((1 << 32) - 1, 1 << 32), True),
        ((0, 1), False),
        ((2, 1), False),
        ((2, 4), False),
        ((6, 10), False),
        ((1, (1 << 32) + 1), False),
        ((1, 0), False),
        ((-1, 2), False),
        ((True, 1), False),
        ((1, True), False),
        ((1.0, 2), False),
        ([1, 2], False),
        ((1,), False),
        ((1, 2, 3), False),
    ],
)
def test_sample_rate_rules(rate: Any, ok: bool) -> None:
    if ok:
        signed = sign_receipt(receipt(sample_rate=rate), EDGE)
        assert decode_entry(encode_entry(signed)) == signed
    else:
        with pytest.raises(MalformedError) as exc:
            receipt(sample_rate=rate)
        assert exc.value.field.startswith("receipt.sample_rate")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("request_id", ""),
        ("request_id", "has space"),
        ("request_id", "caf\u00e9"),
        ("consumer_id", "x" * 257),
        ("token_id", "a\tb"),
        ("creator_id", "a+b"),
        ("edge", ""),
        ("job_id", "x" * 257),
        ("bytes_sent", MAX_SAFE_INTEGER + 1),
        ("bytes_sent", 1.5),
        ("served_at_ms", -1),
        ("key_id", "c0ffee0"),
        ("key_id", "c0ffee000"),
        ("signature", b"\x00" * 63),
        ("signature", b"\x00" * 65),
        ("logged_at_ms", True),
    ],
)
def test_receipt_constructor_validates(name: str, value: Any) -> None:
    with pytest.raises(MalformedError) as exc:
        receipt(**{name: value})
    assert exc.value.field == f"receipt.{name}"


# ---------------------------------------------------------------------------------------------
# Edge keys.


def test_edge_key_sign_and_verify() -> None:
    verify_edge_key(SIGNED_EDGE_KEY, OPERATOR.verifier())
    assert SIGNED_EDGE_KEY.operator_key_id == f"{OPERATOR.verifier().key_id:08x}"
    assert SIGNED_EDGE_KEY.verifier == EDGE.verifier()
    data = encode_entry(SIGNED_EDGE_KEY)
    assert json.loads(data)["kind"] == "edge_key"
    assert decode_entry(data) == SIGNED_EDGE_KEY
    # The key the log registered verifies the edge's receipts.
    verify_receipt(SIGNED_RECEIPT, SIGNED_EDGE_KEY.verifier)
    logged = dataclasses.replace(SIGNED_EDGE_KEY, logged_at_ms=1_700_000_000_900)
    verify_edge_key(decode_entry(encode_entry(logged)), OPERATOR.verifier())


def test_tampering_any_signed_field_breaks_the_edge_key() -> None:
    other = SigningKey(EDGE.name, bytes(32))
    renamed = SigningKey("edge-fra-2", bytes(range(32)))
    tampers: list[dict[str, Any]] = [
        {"key": format_vkey(other.verifier())},
        {"edge": renamed.name, "key": format_vkey(renamed.verifier())},
        {"valid_from_ms": 1_700_000_000_001},
        {"valid_until_ms": 1_800_000_000_001},
        {"valid_until_ms": None},
        {"action": "revoke"},
        {"action": "rotate", "replaces": "0123abcd"},
    ]
    for changes in tampers:
        tampered = dataclasses.replace(SIGNED_EDGE_KEY, **changes)
        with pytest.raises(InvalidSignatureError):
            verify_edge_key(tampered, OPERATOR.verifier())
    rotated = sign_edge_key(edge_key(action="rotate", replaces="0123abcd"), OPERATOR)
    verify_edge_key(rotated, OPERATOR.verifier())
    with pytest.raises(InvalidSignatureError):
        verify_edge_key(dataclasses.replace(rotated, replaces="0123abce"), OPERATOR.verifier())
    for at in range(64):
        signature = bytearray(SIGNED_EDGE_KEY.signature)
        signature[at] ^= 0x80
        with pytest.raises(InvalidSignatureError):
            verify_edge_key(
                dataclasses.replace(SIGNED_EDGE_KEY, signature=bytes(signature)),
                OPERATOR.verifier(),
            )


def test_edge_key_wrong_operator() -> None:
    with pytest.raises(UnknownKeyError):
        verify_edge_key(SIGNED_EDGE_KEY, EDGE.verifier())
    with pytest.raises(UnknownKeyError):
        verify_edge_key(SIGNED_EDGE_KEY, SigningKey(OPERATOR.name, bytes(32)).verifier())
    with pytest.raises(UnknownKeyError):
        verify_edge_key(
            dataclasses.replace(SIGNED_EDGE_KEY, operator_key_id="00000000"), OPERATOR.verifier()
        )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"action": "rotate"}, "edge_key.replaces"),
        ({"action": "register", "replaces": "0123abcd"}, "edge_key.replaces"),
        (
            {"action": "revoke", "replaces": "0123abcd", "valid_until_ms": 1_800_000_000_000},
            "edge_key.replaces",
        ),
        ({"action": "revoke"}, "edge_key.valid_until_ms"),
        ({"action": "unregister"}, "edge_key.action"),
        ({"valid_until_ms": 1_700_000_000_000}, "edge_key.valid_until_ms"),
        ({"valid_until_ms": 1}, "edge_key.valid_until_ms"),
        ({"valid_from_ms": -1}, "edge_key.valid_from_ms"),
        ({"valid_from_ms": True}, "edge_key.valid_from_ms"),
        ({"edge": "edge-fra-2"}, "edge_key.key"),
        ({"key": format_vkey(SigningKey("edge-fra-2", bytes(32)).verifier())}, "edge_key.key"),
        ({"key": format_vkey(EDGE.verifier(ALG_COSIGNATURE_V1))}, "edge_key.key"),
        ({"key": format_vkey(EDGE.verifier())[:-1]}, "edge_key.key"),
        ({"key": "edge-fra-1"}, "edge_key.key"),
        ({"action": "rotate", "replaces": "0123ABCD"}, "edge_key.replaces"),
        ({"action": "rotate", "replaces": "0123abc"}, "edge_key.replaces"),
        ({"operator_key_id": "xyz"}, "edge_key.operator_key_id"),
        ({"signature": b"\x01" * 32}, "edge_key.signature"),
        ({"logged_at_ms": -1}, "edge_key.logged_at_ms"),
    ],
)
def test_edge_key_rules(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        edge_key(**changes)
    assert exc.value.field == field


def test_edge_key_actions_that_are_valid() -> None:
    for action, extra in (
        ("register", {}),
        ("register", {"valid_until_ms": 1_700_000_000_001}),
        ("rotate", {"replaces": "0123abcd"}),
        ("revoke", {"valid_until_ms": 1_700_000_000_001}),
    ):
        signed = sign_edge_key(edge_key(action=action, **extra), OPERATOR)
        assert decode_entry(encode_entry(signed)) == signed
        verify_edge_key(signed, OPERATOR.verifier())


EDGE_KEY_REQUIRED = ["action", "edge", "key", "valid_from_ms", "operator_key_id", "signature"]


@pytest.mark.parametrize("name", EDGE_KEY_REQUIRED)
def test_edge_key_missing_field_is_named(name: str) -> None:
    assert field_of(mutate(SIGNED_EDGE_KEY, **{name: REMOVE})) == f"edge_key.{name}"


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("zzz", 1, "edge_key.zzz"),
        ("request_id", "r", "edge_key.request_id"),
        ("valid_from_ms", True, "edge_key.valid_from_ms"),
        ("valid_from_ms", "1", "edge_key.valid_from_ms"),
        ("valid_until_ms", False, "edge_key.valid_until_ms"),
        ("valid_until_ms", "1", "edge_key.valid_until_ms"),
        ("action", 1, "edge_key.action"),
        ("key", 1, "edge_key.key"),
        ("replaces", 1, "edge_key.replaces"),
        ("operator_key_id", 1, "edge_key.operator_key_id"),
        ("signature", "", "edge_key.signature"),
        ("kind", "edge_keys", "entry.kind"),
    ],
)
def test_edge_key_wrong_values_are_named(name: str, value: Any, field: str) -> None:
    assert field_of(mutate(SIGNED_EDGE_KEY, **{name: value})) == field


# ---------------------------------------------------------------------------------------------
# Round trips over generated entries.

PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
ID_ALPHABET = PRINTABLE.replace("+", "")
MS = st.integers(min_value=0, max_value=MAX_SAFE_INTEGER)
ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=256)
names = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=40)
hex8 = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)
digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map("sha256:".__add__)
signatures = st.binary(min_size=64, max_size=64)


@st.composite
def sample_rates(draw: st.DrawFn) -> tuple[int, int]:
    denominator = draw(st.integers(min_value=1, max_value=1 << 32))
    numerator = draw(st.integers(min_value=1, max_value=denominator))
    g = math.gcd(numerator, denominator)
    return numerator // g, denominator // g


receipts = st.builds(
    Receipt,
    request_id=st.text(alphabet=PRINTABLE, min_size=1, max_size=128),
    edge=ids,
    consumer_id=ids,
    token_id=ids,
    scope=st.sampled_from(SCOPES),
    content_id=digests,
    creator_id=ids,
    manifest=digests,
    bytes_sent=MS,
    cache=st.sampled_from(CACHE_STATUSES),
    served_at_ms=MS,
    job_id=st.none() | ids,
    sample_rate=sample_rates(),
    key_id=hex8,
    signature=signatures,
    logged_at_ms=st.none() | MS,
)


@st.composite
def edge_keys(draw: st.DrawFn) -> EdgeKey:
    edge = draw(names)
    key = format_vkey(SigningKey(edge, draw(st.binary(min_size=32, max_size=32))).verifier())
    action = draw(st.sampled_from(EDGE_KEY_ACTIONS))
    valid_from = draw(st.integers(min_value=0, max_value=MAX_SAFE_INTEGER - 1))
    until = draw(st.none() | st.integers(min_value=valid_from + 1, max_value=MAX_SAFE_INTEGER))
    if action == "revoke" and until is None:
        until = valid_from + 1
    replaces = draw(hex8) if action == "rotate" else None
    return EdgeKey(
        action,
        edge,
        key,
        valid_from,
        until,
        replaces,
        draw(hex8),
        draw(signatures),
        draw(st.none() | MS),
    )


@settings(max_examples=150)
@given(st.one_of(receipts, edge_keys()))
def test_entry_round_trip(entry: Receipt | EdgeKey) -> None:
    data = encode_entry(entry)
    assert len(data) <= MAX_ENTRY_SIZE
    assert decode_entry(data) == entry
    assert encode_entry(decode_entry(data)) == data
    assert parse_canonical_json(data) == json.loads(data)


@given(st.one_of(receipts, edge_keys()), MS)
def test_encoding_checked_fields_is_canonical_json(entry: Receipt | EdgeKey, now_ms: int) -> None:
    # encode_entry and signed_message skip canonical_json's walk over the fields (the
    # entry's own checks made it redundant); they must still give its bytes exactly.
    entry = dataclasses.replace(entry, logged_at_ms=None)
    fields = entry.signed_fields()
    assert signed_message(entry) == canonical_json(fields)
    logged = dataclasses.replace(entry, logged_at_ms=now_ms)
    want = canonical_json(
        {**fields, "signature": encode_b64(entry.signature), "logged_at_ms": now_ms}
    )
    assert encode_entry(entry, logged_at_ms=now_ms) == encode_entry(logged) == want


flat_values = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"])),  # any string without lone surrogates
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.booleans(),
    st.lists(st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), max_size=3),
)


@given(st.dictionaries(st.text(st.characters(max_codepoint=0x7F), max_size=12), flat_values))
def test_field_encoding_is_canonical_json_for_any_checked_values(fields: dict[str, Any]) -> None:
    # What entry kinds may hold (ASCII field names; strings, safe integers, booleans, lists
    # of integers) encodes the same with either codec: control characters, quotes,
    # backslashes, U+2028, DEL and astral characters included.
    assert tlog.entry._fields_json(fields) == canonical_json(fields)


def test_logged_at_ms_is_given_once_and_checked() -> None:
    signed = sign_receipt(receipt(), EDGE)
    logged = dataclasses.replace(signed, logged_at_ms=5)
    with pytest.raises(MalformedError, match=r"receipt\.logged_at_ms: is already set"):
        encode_entry(logged, logged_at_ms=6)
    for bad in (-1, MAX_SAFE_INTEGER + 1, True):
        with pytest.raises(MalformedError, match=r"receipt\.logged_at_ms"):
            encode_entry(signed, logged_at_ms=bad)


@settings(max_examples=40)
@given(receipts, st.binary(min_size=32, max_size=32))
def test_signed_receipt_round_trip(entry: Receipt, seed: bytes) -> None:
    edge = entry.edge[:255]
    key = SigningKey(edge, seed)
    signed = sign_receipt(dataclasses.replace(entry, edge=edge), key)
    decoded = decode_entry(encode_entry(signed))
    assert isinstance(decoded, Receipt)
    verify_receipt(decoded, key.verifier())
    tampered = dataclasses.replace(decoded, bytes_sent=decoded.bytes_sent ^ 1)
    with pytest.raises(InvalidSignatureError):
        verify_receipt(tampered, key.verifier())


@settings(max_examples=40)
@given(edge_keys())
def test_signed_edge_key_round_trip(entry: EdgeKey) -> None:
    signed = sign_edge_key(entry, OPERATOR)
    decoded = decode_entry(encode_entry(signed))
    assert isinstance(decoded, EdgeKey)
    verify_edge_key(decoded, OPERATOR.verifier())
    other_key = format_vkey(SigningKey(decoded.edge, bytes(32)).verifier())
    if other_key != decoded.key:
        tampered = dataclasses.replace(decoded, key=other_key)
        with pytest.raises(InvalidSignatureError):
            verify_edge_key(tampered, OPERATOR.verifier())


# decode_entry reads receipts the fast way (tlog.entry._receipt_of: no reader, the checks
# left to Receipt.__post_init__) and anything else the strict way. The fast way must never
# accept what the strict way refuses, nor give another receipt; and a well-formed receipt
# must take it (else the speed is lost without a test noticing).

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 60), 1 << 60) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=4,
)
RECEIPT_FIELDS = sorted({f.name for f in dataclasses.fields(Receipt)} | {"kind", "extra"})


def _fast_way(data: bytes) -> Receipt | None:
    value = json.loads(data)
    if value.get("kind") != "receipt":
        return None  # decode_entry takes the fast way for receipts only
    try:
        return tlog.entry._receipt_of(value)
    except (MalformedError, KeyError, TypeError, ValueError):
        return None


def _strict_way(data: bytes) -> Receipt | None:
    try:
        entry = tlog.entry._read_entry(parse_canonical_json(data))
    except MalformedError:
        return None
    assert isinstance(entry, Receipt)
    return entry


@settings(max_examples=400)
@given(
    receipts.filter(lambda r: r.logged_at_ms is not None),
    st.dictionaries(st.sampled_from(RECEIPT_FIELDS), st.none() | json_values, max_size=3),
)
def test_the_fast_way_accepts_only_what_the_strict_way_does(
    entry: Receipt, changes: dict[str, Any]
) -> None:
    value = json.loads(encode_entry(entry))
    for name, changed in changes.items():
        if changed is None and name != "kind":
            value.pop(name, None)  # a missing field
        else:
            value[name] = changed  # a null, a value of any type, or an unknown field
    try:
        data = canonical_json(value)
    except MalformedError:
        return  # not an entry's JSON at all (an integer beyond 2**53, say)
    strict = _strict_way(data)
    fast = _fast_way(data)
    if fast is not None:
        assert strict == fast
    if not changes:
        assert fast == entry
    if strict is None:
        with pytest.raises(MalformedError):
            decode_entry(data)
    else:
        assert decode_entry(data) == strict
