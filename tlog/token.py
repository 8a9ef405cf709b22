"""Access tokens: a marketplace's signed, scoped grant for a consumer to fetch content.

Owns the byte format of meterlog access tokens, their signing and their verification.
Imports tlog.entry (canonical JSON, the scopes), tlog.note (keys), tlog.errors and the
standard library; no clock: time is a parameter.

A token is one line of URL-safe ASCII, made to travel in ``Authorization: Bearer``::

    meterlog-token-v1.<base64url(payload)>.<base64url(signature)>

The payload is the canonical JSON (RFC 8785, as for entries) of the token's fields:
``issuer`` (the name of the marketplace key that signs), ``key_id`` (its 8-hex note key ID),
``token_id``, ``consumer_id``, ``scope`` (``training`` | ``inference`` | ``preview``),
``issued_at_ms``, ``expires_at_ms``, and optionally ``job_id`` and ``content`` (a sorted,
duplicate-free allow-list of ``sha256:<hex>`` content ids; absent means any content). The
signature is Ed25519 by the issuer key over ``b"meterlog-token-v1\\n" + payload``: the prefix
keeps a token signature from ever being mistaken for a note or entry signature made with the
same key. base64url is RFC 4648 section 5 without padding, and must be canonical.

Parsing is strict (exact prefix, three parts, canonical base64url and JSON, known fields,
at most :data:`MAX_TOKEN_SIZE` characters); :func:`verify_token` checks the signature with
the issuer's key and the time window, and raises; it never returns False.

>>> key = SigningKey("market.example", bytes(32))
>>> token = sign_token(AccessToken(issuer="market.example", token_id="t-1",
...     consumer_id="acme-ai", scope="training", issued_at_ms=1000, expires_at_ms=2000), key)
>>> text = format_token(token)
>>> text.startswith("meterlog-token-v1.eyJjb25zdW1lcl9pZCI6ImFjbWUtYWki")
True
>>> parse_token(text) == token
True
>>> verify_token(parse_token(text), [key.verifier()], now_ms=1500)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from tlog.entry import SCOPES, JSONValue, canonical_json, parse_canonical_json
from tlog.errors import MalformedError, UnknownKeyError, ValidityError
from tlog.note import ALG_ED25519, SigningKey, Verifier

__all__ = [
    "MAX_CONTENT_IDS",
    "MAX_TOKEN_SIZE",
    "PREFIX",
    "AccessToken",
    "format_token",
    "parse_token",
    "sign_token",
    "token_message",
    "verify_token",
    "verify_token_time",
]

PREFIX = "meterlog-token-v1"
MAX_TOKEN_SIZE = 8192
"""Characters; well under the header limits of common servers and CDNs (8 to 16 KiB)."""
MAX_CONTENT_IDS = 100
"""An allow-list longer than this does not fit in :data:`MAX_TOKEN_SIZE` anyway."""

_MAX_MS = (1 << 53) - 1
_ID = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,255}")  # as entry ids: printable ASCII, no space or '+'
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_T = TypeVar("_T", str, int, list[object])
_FIELDS = frozenset(
    {
        "issuer",
        "key_id",
        "token_id",
        "consumer_id",
        "scope",
        "issued_at_ms",
        "expires_at_ms",
        "job_id",
        "content",
    }
)


def _text(value: object, field: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedError(field, f"{value!r} does not match {pattern.pattern}")


def _ms(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_MS:
        raise MalformedError(field, f"{value!r} is not an integer in 0..2**53-1")


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What the marketplace granted: ``consumer_id`` may fetch content (any, or only the ids
    in ``content``) with ``scope`` in ``[issued_at_ms, expires_at_ms)``, for ``job_id``.

    ``key_id`` and ``signature`` are empty until :func:`sign_token`.
    """

    issuer: str
    token_id: str
    consumer_id: str
    scope: str
    issued_at_ms: int
    expires_at_ms: int
    job_id: str | None = None
    content: tuple[str, ...] | None = None
    key_id: str = ""
    signature: bytes = b""

    def __post_init__(self) -> None:
        for name in ("issuer", "token_id", "consumer_id"):
            _text(getattr(self, name), f"token.{name}", _ID)
        if self.job_id is not None:
            _text(self.job_id, "token.job_id", _ID)
        if self.scope not in SCOPES:
            raise MalformedError("token.scope", f"{self.scope!r} is not one of {', '.join(SCOPES)}")
        _ms(self.issued_at_ms, "token.issued_at_ms")
        _ms(self.expires_at_ms, "token.expires_at_ms")
        if self.expires_at_ms <= self.issued_at_ms:
            raise MalformedError("token.expires_at_ms", "is not after issued_at_ms")
        if self.content is not None:
            if not isinstance(self.content, tuple) or not self.content:
                raise MalformedError("token.content", "an allow-list needs at least one id")
            if len(self.content) > MAX_CONTENT_IDS:
                raise MalformedError("token.content", f"more than {MAX_CONTENT_IDS} content ids")
            for i, content_id in enumerate(self.content):
                _text(content_id, f"token.content[{i}]", _DIGEST)
            if list(self.content) != sorted(set(self.content)):
                raise MalformedError("token.content", "not sorted, or holds an id twice")
        if self.key_id:
            _text(self.key_id, "token.key_id", _KEY_ID)
        if self.signature and len(self.signature) != 64:
            raise MalformedError("token.signature", "not a 64-byte Ed25519 signature")

    def allows(self, content_id: str) -> bool:
        """Whether the allow-list (if any) names ``content_id``."""
        return self.content is None or content_id in self.content

    def signed_fields(self) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {
            "issuer": self.issuer,
            "key_id": self.key_id,
            "token_id": self.token_id,
            "consumer_id": self.consumer_id,
            "scope": self.scope,
            "issued_at_ms": self.issued_at_ms,
            "expires_at_ms": self.expires_at_ms,
        }
        if self.job_id is not None:
            fields["job_id"] = self.job_id
        if self.content is not None:
            fields["content"] = list(self.content)
        return fields


def token_message(token: AccessToken) -> bytes:
    """What the issuer signs: the prefix, a newline, then the canonical payload."""
    return PREFIX.encode() + b"\n" + canonical_json(token.signed_fields())


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str, field: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise MalformedError(field, "not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - the pattern and length rule it out
        raise MalformedError(field, "not unpadded base64url") from exc
    if _encode(data) != text:
        raise MalformedError(field, "base64url is not canonical")
    return data


def format_token(token: AccessToken) -> str:
    """The token string; only signed tokens have one."""
    if not token.signature or not token.key_id:
        raise MalformedError("token.signature", "an unsigned token cannot be formatted")
    payload = canonical_json(token.signed_fields())
    text = f"{PREFIX}.{_encode(payload)}.{_encode(token.signature)}"
    if len(text) > MAX_TOKEN_SIZE:
        raise MalformedError("token", f"{len(text)} characters, over {MAX_TOKEN_SIZE}")
    return text


def _take(obj: dict[str, object], name: str, kind: type[_T]) -> _T:
    if name not in obj:
        raise MalformedError(f"token.{name}", "missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MalformedError(f"token.{name}", f"{value!r} is not {kind.__name__}")
    return value


def parse_token(text: str) -> AccessToken:
    """Parse a token string strictly; nothing is verified (see :func:`verify_token`)."""
    if len(text) > MAX_TOKEN_SIZE:
        raise MalformedError("token", f"longer than {MAX_TOKEN_SIZE} characters")
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise MalformedError("token", f"not {PREFIX}.<payload>.<signature>")
    payload = _decode(parts[1], "token.payload")
    signature = _decode(parts[2], "token.signature")
    obj = parse_canonical_json(payload, "token")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise MalformedError(f"token.{unknown[0]}", "unknown field")
    content: tuple[str, ...] | None = None
    if "content" in obj:
        ids: list[str] = []
        for i, item in enumerate(_take(obj, "content", list)):
            if not isinstance(item, str):
                raise MalformedError(f"token.content[{i}]", f"{item!r} is not str")
            ids.append(item)
        content = tuple(ids)
    key_id = _take(obj, "key_id", str)
    if not key_id:
        raise MalformedError("token.key_id", "empty")
    if not signature:
        raise MalformedError("token.signature", "empty")
    return AccessToken(
        issuer=_take(obj, "issuer", str),
        key_id=key_id,
        token_id=_take(obj, "token_id", str),
        consumer_id=_take(obj, "consumer_id", str),
        scope=_take(obj, "scope", str),
        issued_at_ms=_take(obj, "issued_at_ms", int),
        expires_at_ms=_take(obj, "expires_at_ms", int),
        job_id=_take(obj, "job_id", str) if "job_id" in obj else None,
        content=content,
        signature=signature,
    )


def _key_id_hex(verifier: Verifier) -> str:
    return f"{verifier.key_id:08x}"


def sign_token(token: AccessToken, key: SigningKey) -> AccessToken:
    """The token signed by the marketplace ``key``, which must be named ``token.issuer``."""
    if key.name != token.issuer:
        raise MalformedError("token.issuer", f"{token.issuer!r} is not the key's name {key.name!r}")
    unsigned = dataclasses.replace(token, key_id=_key_id_hex(key.verifier()), signature=b"")
    return dataclasses.replace(unsigned, signature=key.sign(token_message(unsigned)))


def verify_token(
    token: AccessToken, keys: Sequence[Verifier], *, now_ms: int, leeway_ms: int = 0
) -> None:
    """Check the issuer's signature (by one of ``keys``) and that ``now_ms`` lies in
    ``[issued_at_ms - leeway_ms, expires_at_ms + leeway_ms)``.

    Raises UnknownKeyError (no key of that name and ID), InvalidSignatureError, or
    ValidityError (not yet valid, or expired); returns None when the token is good now.
    """
    for key in keys:
        if key.name == token.issuer and _key_id_hex(key) == token.key_id:
            break
    else:
        raise UnknownKeyError(f"token is signed by {token.issuer}+{token.key_id}, a key not given")
    if key.alg != ALG_ED25519:
        raise MalformedError("key", "tokens are signed with Ed25519 (type 0x01) keys")
    if not token.signature:
        raise MalformedError("token.signature", "missing")
    key.verify_message(token_message(token), token.signature)
    verify_token_time(token, now_ms=now_ms, leeway_ms=leeway_ms)


def verify_token_time(token: AccessToken, *, now_ms: int, leeway_ms: int = 0) -> None:
    """The time half of :func:`verify_token`, for a token whose signature was checked
    before: ValidityError unless ``now_ms`` is in its window, widened by ``leeway_ms``."""
    valid_from_ms = token.issued_at_ms - leeway_ms
    valid_until_ms = token.expires_at_ms + leeway_ms
    if not valid_from_ms <= now_ms < valid_until_ms:
        reason = "token is not valid yet" if now_ms < valid_from_ms else "token has expired"
        raise ValidityError(
            reason, now_ms=now_ms, valid_from_ms=valid_from_ms, valid_until_ms=valid_until_ms
        )
