"""Tests of tlog.token: access tokens formatted and parsed (each against the other, and by
hypothesis), strict parsing with the field named, signatures, keys and the time window."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlog.entry import SCOPES, canonical_json
from tlog.errors import (
    InvalidSignatureError,
    MalformedError,
    UnknownKeyError,
    ValidityError,
    VerificationError,
)
from tlog.note import ALG_COSIGNATURE_V1, SigningKey
from tlog.token import (
    MAX_CONTENT_IDS,
    MAX_TOKEN_SIZE,
    PREFIX,
    AccessToken,
    format_token,
    parse_token,
    sign_token,
    token_message,
    verify_token,
    verify_token_time,
)

MARKET = SigningKey("market.example", bytes(range(32)))
OTHER = SigningKey("market.example", bytes(range(1, 33)))  # same name, other key
DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32
T0 = 1_800_000_000_000


def token(**changes: Any) -> AccessToken:
    fields: dict[str, Any] = {
        "issuer": MARKET.name,
        "token_id": "tok-1",
        "consumer_id": "acme-ai",
        "scope": "training",
        "issued_at_ms": T0,
        "expires_at_ms": T0 + 3_600_000,
        "job_id": "job-42",
        "content": (DIGEST_A, DIGEST_B),
    }
    fields.update(changes)
    return AccessToken(**fields)


SIGNED = sign_token(token(), MARKET)
TEXT = format_token(SIGNED)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_payload(obj: dict[str, object], signature: bytes = SIGNED.signature) -> str:
    """A token string with this payload (canonical JSON) and signature."""
    return f"{PREFIX}.{b64url(canonical_json(obj))}.{b64url(signature)}"


def payload() -> dict[str, object]:
    part = TEXT.split(".")[1]
    value: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def test_round_trip_and_verify() -> None:
    parsed = parse_token(TEXT)
    assert parsed == SIGNED
    assert format_token(parsed) == TEXT
    verify_token(parsed, [MARKET.verifier()], now_ms=T0)
    verify_token(parsed, [OTHER.verifier(), MARKET.verifier()], now_ms=T0 + 3_599_999)


def test_signed_message_is_domain_separated() -> None:
    message = token_message(SIGNED)
    assert message.startswith(b"meterlog-token-v1\n{")
    assert message == PREFIX.encode() + b"\n" + canonical_json(SIGNED.signed_fields())
    MARKET.verifier().verify_message(message, SIGNED.signature)


@given(
    scope=st.sampled_from(SCOPES),
    issued=st.integers(min_value=0, max_value=2**52),
    ttl=st.integers(min_value=1, max_value=2**40),
    job=st.none() | st.text("abcxyz-_:0123456789", min_size=1, max_size=20),
    content=st.none()
    | st.sets(st.binary(min_size=32, max_size=32), min_size=1, max_size=5).map(
        lambda ds: tuple(sorted("sha256:" + d.hex() for d in ds))
    ),
)
def test_any_valid_token_round_trips(
    scope: str, issued: int, ttl: int, job: str | None, content: tuple[str, ...] | None
) -> None:
    signed = sign_token(
        token(scope=scope, issued_at_ms=issued, expires_at_ms=issued + ttl, job_id=job,
              content=content),
        MARKET,
    )  # fmt: skip
    text = format_token(signed)
    assert len(text) <= MAX_TOKEN_SIZE
    assert parse_token(text) == signed
    verify_token(parse_token(text), [MARKET.verifier()], now_ms=issued)


def test_time_window_is_half_open_with_leeway() -> None:
    keys = [MARKET.verifier()]
    with pytest.raises(ValidityError, match="not valid yet") as early:
        verify_token(SIGNED, keys, now_ms=T0 - 1)
    assert early.value.valid_from_ms == T0
    with pytest.raises(ValidityError, match="expired") as late:
        verify_token(SIGNED, keys, now_ms=T0 + 3_600_000)
    assert late.value.now_ms == T0 + 3_600_000
    verify_token(SIGNED, keys, now_ms=T0 - 1000, leeway_ms=1000)
    verify_token(SIGNED, keys, now_ms=T0 + 3_600_999, leeway_ms=1000)
    with pytest.raises(ValidityError):
        verify_token_time(SIGNED, now_ms=T0 + 3_601_000, leeway_ms=1000)


def test_unknown_key_and_bad_signature() -> None:
    with pytest.raises(UnknownKeyError):
        verify_token(SIGNED, [OTHER.verifier()], now_ms=T0)
    with pytest.raises(UnknownKeyError):
        verify_token(SIGNED, [SigningKey("other.example", MARKET.seed).verifier()], now_ms=T0)
    with pytest.raises(UnknownKeyError):  # the same seed as a cosigner has another key ID
        verify_token(SIGNED, [MARKET.verifier(ALG_COSIGNATURE_V1)], now_ms=T0 + 1)
    # Every bit of the signature, and every field, is covered.
    for i in range(64):
        bad = bytearray(SIGNED.signature)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(InvalidSignatureError):
            verify_token(
                dataclasses.replace(SIGNED, signature=bytes(bad)), [MARKET.verifier()], now_ms=T0
            )
    changes: dict[str, object] = {
        "token_id": "tok-2",
        "consumer_id": "evil-ai",
        "scope": "inference",
        "issued_at_ms": T0 - 1,
        "expires_at_ms": T0 + 3_600_001,
        "job_id": None,
        "content": None,
    }
    for name, value in changes.items():
        forged = dataclasses.replace(SIGNED, **{name: value})
        with pytest.raises(VerificationError):
            verify_token(parse_token(format_token(forged)), [MARKET.verifier()], now_ms=T0)


def test_sign_needs_the_issuers_key() -> None:
    with pytest.raises(MalformedError) as exc:
        sign_token(token(issuer="someone.else"), MARKET)
    assert exc.value.field == "token.issuer"
    with pytest.raises(MalformedError):
        format_token(token())  # unsigned


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scope": "admin"}, "token.scope"),
        ({"consumer_id": "has space"}, "token.consumer_id"),
        ({"token_id": "a+b"}, "token.token_id"),
        ({"job_id": ""}, "token.job_id"),
        ({"issuer": ""}, "token.issuer"),
        ({"expires_at_ms": T0}, "token.expires_at_ms"),
        ({"issued_at_ms": -1}, "token.issued_at_ms"),
        ({"expires_at_ms": 2**53}, "token.expires_at_ms"),
        ({"issued_at_ms": True}, "token.issued_at_ms"),
        ({"content": ()}, "token.content"),
        ({"content": (DIGEST_B, DIGEST_A)}, "token.content"),
        ({"content": (DIGEST_A, DIGEST_A)}, "token.content"),
        ({"content": ("sha256:AB",)}, "token.content[0]"),
        (
            {"content": tuple(f"sha256:{i:064x}" for i in range(MAX_CONTENT_IDS + 1))},
            "token.content",
        ),
        ({"key_id": "XYZ"}, "token.key_id"),
        ({"signature": b"short"}, "token.signature"),
    ],
)
def test_invalid_values_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        token(**changes)
    assert exc.value.field == field


def bad_token_texts() -> list[tuple[str, str]]:
    good = payload()
    cases: list[tuple[str, str]] = [
        ("", "token"),
        ("Bearer " + TEXT, "token"),
        (TEXT.replace(PREFIX, "meterlog-token-v2", 1), "token"),
        (TEXT + ".x", "token"),
        (TEXT.rsplit(".", 1)[0], "token"),
        (TEXT + "=", "token.signature"),  # padding is not allowed
        (TEXT.replace(".", ".+", 1), "token.payload"),  # not base64url
        (TEXT[:-1] + ("B" if TEXT[-1] == "A" else "A"), "token.signature"),  # stray bits
        ("x" * (MAX_TOKEN_SIZE + 1), "token"),
        (f"{PREFIX}.{b64url(b'not json')}.{b64url(SIGNED.signature)}", "token"),
        (f"{PREFIX}.{b64url(json.dumps(good).encode())}.{b64url(SIGNED.signature)}", "token"),
        (with_payload({**good, "extra": 1}), "token.extra"),
        (with_payload({**good, "issued_at_ms": "1"}), "token.issued_at_ms"),
        (with_payload({**good, "content": [1]}), "token.content[0]"),
        (with_payload({**good, "content": "sha256:x"}), "token.content"),
        (with_payload({**good, "key_id": ""}), "token.key_id"),
        (with_payload(good, signature=b""), "token.signature"),
        (with_payload({**good, "scope": "admin"}), "token.scope"),
    ]
    for name in ("issuer", "key_id", "token_id", "consumer_id", "scope", "issued_at_ms"):
        cases.append((with_payload({k: v for k, v in good.items() if k != name}), f"token.{name}"))
    return cases


@pytest.mark.parametrize(("text", "field"), bad_token_texts())
def test_malformed_tokens_name_the_field(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_token(text)
    assert exc.value.field == field


def test_a_float_in_the_payload_is_refused() -> None:
    raw = canonical_json(payload()).replace(b'"issued_at_ms":', b'"issued_at_ms":1.5,"x":')
    with pytest.raises(MalformedError):
        parse_token(f"{PREFIX}.{b64url(raw)}.{b64url(SIGNED.signature)}")


def test_allows() -> None:
    assert SIGNED.allows(DIGEST_A)
    assert not SIGNED.allows("sha256:" + "c3" * 32)
    assert token(content=None).allows("sha256:" + "c3" * 32)
