"""Tests of the catalog and billing kinds of tlog.entry: ``creator``, ``manifest``,
``statement``, ``dispute`` and ``revenue``. Each: encode/decode round trips (hypothesis),
sign/verify pairs against each other, every signed field covered by the signature, the wrong
key refused, and bad values refused with the field named. Every test runs with both codecs,
as tests/tlog/test_entry.py's do (its module fixture, imported here)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tlog.test_entry import field_of, json_codec  # noqa: F401 -- the fixture
from tlog.entry import (
    SCOPES,
    TERMS,
    Creator,
    Dispute,
    Manifest,
    Revenue,
    Statement,
    canonical_json,
    decode_entry,
    encode_entry,
    sign_creator,
    sign_dispute,
    sign_manifest,
    sign_revenue,
    sign_statement,
    signed_message,
    verify_creator,
    verify_dispute,
    verify_manifest,
    verify_revenue,
    verify_statement,
)
from tlog.errors import InvalidSignatureError, MalformedError, UnknownKeyError
from tlog.note import SigningKey, format_vkey

OPERATOR = SigningKey("operator.example", bytes(range(10, 42)))
CREATOR = SigningKey("acct:alice", bytes(range(20, 52)))
OTHER_CREATOR = SigningKey("acct:bob", bytes(range(30, 62)))
BILLING = SigningKey("billing.example", bytes(range(40, 72)))
DIGEST = "sha256:" + "ab" * 32
DIGEST_2 = "sha256:" + "cd" * 32


def creator(**changes: Any) -> Creator:
    fields: dict[str, Any] = {
        "creator_id": CREATOR.name,
        "key": format_vkey(CREATOR.verifier()),
        "currency": "USD",
    }
    fields.update(changes)
    return Creator(**fields)


def manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "action": "publish",
        "creator_id": CREATOR.name,
        "content_id": DIGEST,
        "version": 1,
        "manifest": DIGEST_2,
        "scopes": ("inference", "training"),
        "terms": (("per_gib", "0.02"), ("training", "0.05")),
        "license": "https://market.example/licenses/1",
    }
    fields.update(changes)
    return Manifest(**fields)


def statement(**changes: Any) -> Statement:
    fields: dict[str, Any] = {
        "digest": DIGEST,
        "creator_id": CREATOR.name,
        "currency": "USD",
        "range_start": 10,
        "range_end": 20,
        "period_end_ms": 1_700_000_000_000,
        "lines": 3,
        "paid_minor": 1234,
        "carry_minor": 0,
        "reserve_minor": 137,
        "reserve_release_ms": 1_702_592_000_000,
        "previous": DIGEST_2,
        "released": (DIGEST_2,),
    }
    fields.update(changes)
    return Statement(**fields)


def dispute(**changes: Any) -> Dispute:
    fields: dict[str, Any] = {
        "action": "open",
        "creator_id": CREATOR.name,
        "statement": DIGEST,
        "line": 2,
        "reason": "line 2 counts a retry twice",
    }
    fields.update(changes)
    return Dispute(**fields)


def revenue(**changes: Any) -> Revenue:
    fields: dict[str, Any] = {
        "consumer_id": "acme-ai",
        "currency": "USD",
        "amount_minor": 1_000_000,
        "period_start_ms": 1_700_000_000_000,
        "period_end_ms": 1_702_592_000_000,
        "reference": "acme-2026-11",
    }
    fields.update(changes)
    return Revenue(**fields)


SIGNED = {
    "creator": (sign_creator(creator(), OPERATOR), verify_creator, OPERATOR),
    "rotation": (
        sign_creator(creator(currency="GBP", follows=7), OPERATOR),
        verify_creator,
        OPERATOR,
    ),
    "manifest": (sign_manifest(manifest(), CREATOR), verify_manifest, CREATOR),
    "withdrawal": (
        sign_manifest(manifest(action="withdraw", scopes=(), terms=(), license=None), CREATOR),
        verify_manifest,
        CREATOR,
    ),
    "statement": (sign_statement(statement(), BILLING), verify_statement, BILLING),
    "dispute": (sign_dispute(dispute(), CREATOR), verify_dispute, CREATOR),
    "reopening": (sign_dispute(dispute(follows=12), CREATOR), verify_dispute, CREATOR),
    "withdrawal of a dispute": (
        sign_dispute(dispute(action="close", follows=11), CREATOR),
        verify_dispute,
        CREATOR,
    ),
    "resolution": (
        sign_dispute(
            dispute(action="close", by="operator", reason="refunded", follows=11), OPERATOR
        ),
        verify_dispute,
        OPERATOR,
    ),
    "revenue": (sign_revenue(revenue(), OPERATOR), verify_revenue, OPERATOR),
}


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_signed_entry_round_trips_and_verifies(name: str) -> None:
    entry, verify, key = SIGNED[name]
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert encode_entry(decode_entry(data)) == data
    verify(entry, key.verifier())
    logged = encode_entry(entry, logged_at_ms=1_700_000_000_777)
    assert decode_entry(logged) == dataclasses.replace(entry, logged_at_ms=1_700_000_000_777)
    assert json.loads(logged)["kind"] == entry.kind


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_every_signed_field_is_covered(name: str) -> None:
    """Changing any signed field at the JSON level (keeping the entry valid) breaks the
    signature; logged_at_ms is outside it."""
    entry, verify, key = SIGNED[name]
    obj = json.loads(encode_entry(entry))
    checked = 0
    for field, value in entry.signed_fields().items():
        if field == "kind":
            continue
        changed = dict(obj)
        changed[field] = _other(field, value)
        try:
            tampered = decode_entry(canonical_json(changed))
        except MalformedError:
            continue  # the change made it invalid: refused before any signature check
        with pytest.raises((InvalidSignatureError, UnknownKeyError)):
            verify(tampered, key.verifier())
        checked += 1
    assert checked >= len(entry.signed_fields()) // 2
    verify(dataclasses.replace(entry, logged_at_ms=5), key.verifier())


def _other(field: str, value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [] if value else [DIGEST]
    if isinstance(value, dict):
        return {**value, "preview": "0.01"}
    assert isinstance(value, str)
    if value.startswith("sha256:"):
        return "sha256:" + "ef" * 32
    if field in ("currency",):
        return "EUR"
    if field.endswith("key_id"):
        return "00000000"
    return value + "x"


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_another_key_is_refused(name: str) -> None:
    entry, verify, _ = SIGNED[name]
    stranger = SigningKey(entry.creator_id if hasattr(entry, "creator_id") else "x", b"\x99" * 32)
    with pytest.raises(UnknownKeyError):
        verify(entry, stranger.verifier())


def test_signers_must_be_the_named_creator() -> None:
    with pytest.raises(MalformedError) as exc:
        sign_manifest(manifest(), OTHER_CREATOR)
    assert exc.value.field == "manifest.creator_id"
    with pytest.raises(MalformedError) as exc:
        sign_dispute(dispute(), OTHER_CREATOR)
    assert exc.value.field == "dispute.creator_id"


def test_a_statement_is_verified_only_by_the_key_it_names() -> None:
    entry = SIGNED["statement"][0]
    assert isinstance(entry, Statement)
    assert entry.billing_key == format_vkey(BILLING.verifier())
    same_name = SigningKey(BILLING.name, b"\x07" * 32)
    with pytest.raises(UnknownKeyError):
        verify_statement(entry, same_name.verifier())


def test_operator_close_is_verified_against_the_operator() -> None:
    entry = SIGNED["resolution"][0]
    with pytest.raises(UnknownKeyError):
        verify_dispute(entry, CREATOR.verifier())


BAD = [
    (creator, {"creator_id": "has space"}, "creator.creator_id"),
    (creator, {"key": format_vkey(OTHER_CREATOR.verifier())}, "creator.key"),
    (creator, {"key": "not a key"}, "creator.key"),
    (creator, {"currency": "usd"}, "creator.currency"),
    (creator, {"currency": "DOLLAR"}, "creator.currency"),
    (creator, {"follows": -1}, "creator.follows"),
    (creator, {"follows": True}, "creator.follows"),
    (manifest, {"action": "delete"}, "manifest.action"),
    (manifest, {"content_id": "sha256:12"}, "manifest.content_id"),
    (manifest, {"version": 0}, "manifest.version"),
    (manifest, {"version": True}, "manifest.version"),
    (manifest, {"manifest": "md5:00"}, "manifest.manifest"),
    (manifest, {"scopes": ()}, "manifest.scopes"),
    (manifest, {"scopes": ("training", "inference")}, "manifest.scopes"),
    (manifest, {"scopes": ("training", "training")}, "manifest.scopes"),
    (manifest, {"scopes": ("research",)}, "manifest.scopes[0]"),
    (manifest, {"terms": ()}, "manifest.terms"),
    (manifest, {"terms": (("bonus", "1"),)}, "manifest.terms"),
    (manifest, {"terms": (("training", "0.1"), ("per_gib", "1"))}, "manifest.terms"),
    (manifest, {"terms": (("training", "-1"),)}, "manifest.terms.training"),
    (manifest, {"terms": (("training", "1e3"),)}, "manifest.terms.training"),
    (manifest, {"terms": (("training", "0.1234567890123"),)}, "manifest.terms.training"),
    (manifest, {"terms": (("revenue_share", "1.5"),)}, "manifest.terms.revenue_share"),
    (manifest, {"terms": (("savings_share", "1.01"),)}, "manifest.terms.savings_share"),
    (manifest, {"license": None}, "manifest.license"),
    (manifest, {"license": "not a uri"}, "manifest.license"),
    (manifest, {"action": "withdraw"}, "manifest.action"),
    (statement, {"digest": "sha256:AB" + "ab" * 31}, "statement.digest"),
    (statement, {"range_end": 10}, "statement.range_end"),
    (statement, {"lines": -1}, "statement.lines"),
    (statement, {"paid_minor": 2**53}, "statement.paid_minor"),
    (statement, {"released": (DIGEST_2, DIGEST)}, "statement.released"),
    (statement, {"released": ("x",)}, "statement.released[0]"),
    (statement, {"billing_key": "nope"}, "statement.billing_key"),
    (dispute, {"action": "escalate"}, "dispute.action"),
    (dispute, {"line": 0}, "dispute.line"),
    (dispute, {"reason": ""}, "dispute.reason"),
    (dispute, {"reason": "caf\u00e9"}, "dispute.reason"),
    (dispute, {"by": "operator"}, "dispute.by"),
    (dispute, {"by": "buyer", "action": "close", "follows": 1}, "dispute.by"),
    (dispute, {"action": "close"}, "dispute.follows"),  # a close names the open it closes
    (dispute, {"action": "close", "by": "operator"}, "dispute.follows"),
    (dispute, {"follows": -1}, "dispute.follows"),
    (dispute, {"follows": 2**53}, "dispute.follows"),
    (dispute, {"follows": "3"}, "dispute.follows"),
    (revenue, {"amount_minor": -1}, "revenue.amount_minor"),
    (revenue, {"period_end_ms": 1_700_000_000_000}, "revenue.period_end_ms"),
    (revenue, {"reference": ""}, "revenue.reference"),
]


@pytest.mark.parametrize(("make", "changes", "field"), BAD)
def test_bad_values_name_the_field(make: Any, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        make(**changes)
    assert exc.value.field == field


def test_decoding_is_strict() -> None:
    entry = SIGNED["manifest"][0]
    obj = json.loads(encode_entry(entry))
    for name in ("scopes", "terms", "license", "version", "signature"):
        assert field_of(canonical_json({k: v for k, v in obj.items() if k != name})) == (
            f"manifest.{name}"
        )
    assert field_of(canonical_json({**obj, "extra": "x"})) == "manifest.extra"
    assert field_of(canonical_json({**obj, "terms": {"training": 5}})) == "manifest.terms.training"
    assert field_of(canonical_json({**obj, "terms": ["training"]})) == "manifest.terms"
    assert field_of(canonical_json({**obj, "scopes": [1]})) == "manifest.scopes[0]"
    withdrawal = json.loads(encode_entry(SIGNED["withdrawal"][0]))
    assert field_of(canonical_json({**withdrawal, "scopes": ["training"]})) == "manifest.scopes"
    spaced = encode_entry(entry).replace(b'{"action"', b'{ "action"', 1)
    assert field_of(spaced) == "entry"
    with pytest.raises(MalformedError) as exc:
        encode_entry(statement())
    assert exc.value.field == "statement.signature"


def test_follows_is_signed_when_present_and_absent_otherwise() -> None:
    """A first registration and a line's first dispute leave ``follows`` out (their bytes
    are those of entries from before the field); a close cannot: a missing ``follows`` in
    the JSON of a close is refused with the field named."""
    first = json.loads(encode_entry(SIGNED["dispute"][0]))
    assert "follows" not in first and "follows" not in json.loads(
        encode_entry(SIGNED["creator"][0])
    )
    reopened = SIGNED["reopening"][0]
    assert reopened.signed_fields()["follows"] == 12
    assert signed_message(reopened) != signed_message(dataclasses.replace(reopened, follows=None))
    close = json.loads(encode_entry(SIGNED["resolution"][0]))
    assert field_of(canonical_json({k: v for k, v in close.items() if k != "follows"})) == (
        "dispute.follows"
    )
    assert field_of(canonical_json({**close, "follows": "11"})) == "dispute.follows"


def test_withdrawals_carry_no_terms() -> None:
    entry = SIGNED["withdrawal"][0]
    assert isinstance(entry, Manifest)
    assert set(entry.signed_fields()) == {
        "kind", "action", "creator_id", "content_id", "version", "manifest", "key_id",
    }  # fmt: skip
    assert entry.term("training") is None
    assert SIGNED["manifest"][0].term("training") == "0.05"  # type: ignore[union-attr]


def test_signed_message_is_the_canonical_signed_fields() -> None:
    for entry, _, _ in SIGNED.values():
        assert signed_message(entry) == canonical_json(entry.signed_fields())


# -- round trips of generated entries ------------------------------------------------------

_ids = st.from_regex(r"[a-z][a-z0-9:@._-]{0,20}", fullmatch=True)
_digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
_decimals = st.from_regex(r"(0|[1-9][0-9]{0,5})(\.[0-9]{1,6})?", fullmatch=True)
_shares = st.from_regex(r"0(\.[0-9]{1,6})?|1(\.0{1,3})?", fullmatch=True)
_ms = st.integers(0, 2**50)


@st.composite
def _manifests(draw: st.DrawFn) -> Manifest:
    if draw(st.booleans()):
        return manifest(action="withdraw", scopes=(), terms=(), license=None,
                        version=draw(st.integers(1, 10**6)))  # fmt: skip
    names = draw(st.lists(st.sampled_from(TERMS), min_size=1, unique=True))
    terms = tuple(sorted((n, draw(_shares if n.endswith("_share") else _decimals)) for n in names))
    scopes = tuple(sorted(draw(st.lists(st.sampled_from(SCOPES), min_size=1, unique=True))))
    return manifest(
        content_id=draw(_digests), manifest=draw(_digests), version=draw(st.integers(1, 10**6)),
        scopes=scopes, terms=terms,
    )  # fmt: skip


@st.composite
def _statements(draw: st.DrawFn) -> Statement:
    start = draw(st.integers(0, 2**40))
    released = tuple(sorted(set(draw(st.lists(_digests, max_size=4)))))
    return statement(
        digest=draw(_digests), range_start=start, range_end=start + draw(st.integers(1, 2**20)),
        period_end_ms=draw(_ms), lines=draw(st.integers(0, 10**5)),
        paid_minor=draw(st.integers(0, 2**50)), carry_minor=draw(st.integers(0, 2**40)),
        reserve_minor=draw(st.integers(0, 2**40)), reserve_release_ms=draw(_ms),
        previous=draw(st.none() | _digests), released=released,
    )  # fmt: skip


_entries = st.one_of(
    st.builds(lambda c, cur: sign_creator(creator(currency=cur), OPERATOR), _ids,
              st.from_regex(r"[A-Z]{3}", fullmatch=True)),
    _manifests().map(lambda m: sign_manifest(m, CREATOR)),
    _statements().map(lambda s: sign_statement(s, BILLING)),
    st.builds(lambda line, reason, action, follows: sign_dispute(
        dispute(line=line, reason=reason, action=action,
                follows=follows if follows is not None or action == "open" else 0), CREATOR),
              st.integers(1, 10**6), st.from_regex(r"[ -~]{1,60}", fullmatch=True),
              st.sampled_from(("open", "close")), st.none() | st.integers(0, 2**53 - 1)),
    st.builds(lambda amount, start, c: sign_revenue(
        revenue(amount_minor=amount, period_start_ms=start, period_end_ms=start + 1,
                consumer_id=c), OPERATOR), st.integers(0, 2**50), _ms, _ids),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(_entries, st.none() | _ms)
def test_generated_entries_round_trip(entry: Any, logged_at_ms: int | None) -> None:
    data = encode_entry(entry, logged_at_ms=logged_at_ms)
    decoded = decode_entry(data)
    assert decoded == dataclasses.replace(entry, logged_at_ms=logged_at_ms)
    assert encode_entry(decoded) == data
    assert data == canonical_json(json.loads(data))
