"""Log entries: the canonical JSON encoding, and the ``receipt`` and ``edge_key`` kinds.

Owns the bytes of every leaf of a meterlog log. An entry is one canonical JSON object
(RFC 8785: object keys sorted by UTF-16 code units, no insignificant whitespace, strings as
ECMAScript's JSON.stringify writes them, integers only, within +-(2**53 - 1)) of at most
65,535 bytes, the largest an entry bundle can frame. There are no floats and no nulls
anywhere: an absent optional field is left out. Decoding is strict: duplicate keys, floats,
unknown or missing fields, wrong types and any input that is not already canonical are
rejected with the field named. Imports tlog.note, tlog.parsing and tlog.errors.

Kinds:

* ``receipt`` — one delivery, signed by an edge key named after the edge. The signature
  covers the canonical JSON of every field but ``signature`` and ``logged_at_ms``; the log
  adds ``logged_at_ms`` (its own clock), so the leaf binds both times.
* ``edge_key`` — an edge key registered, rotated or revoked, with its validity window,
  signed by the operator key, so every key that may sign receipts is itself in the log.
* ``creator`` — a creator's key and payout currency, registered by the operator; a new
  registration ``follows`` the one it replaces.
* ``manifest`` — one version of one piece of content, published (licensed scopes, payout
  terms, license URI) or withdrawn for new use, signed by its creator's registered key.
* ``statement`` — the digest of a creator's billing statement over a committed range, with
  the money the next run carries on, signed by a billing key the log accepts.
* ``dispute`` — a creator disputes a line of its statement (or the dispute is closed); each
  ``follows`` the line's latest dispute entry.
* ``revenue`` — a buyer's declared revenue for a period, signed by the operator.

Every kind is signed over the canonical JSON of all its fields but ``signature`` and
``logged_at_ms`` (``signed_fields()``), by the key its key-ID field names.

>>> canonical_json({"b": [1, True, "é"], "a": {}})
b'{"a":{},"b":[1,true,"\\xc3\\xa9"]}'
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeAlias, TypeVar

from tlog.errors import MalformedError, UnknownKeyError
from tlog.note import ALG_ED25519, SigningKey, Verifier, format_vkey, parse_vkey
from tlog.parsing import decode_b64, encode_b64
from tlog.tiles import MAX_ENTRY_SIZE

__all__ = [
    "CACHE_STATUSES",
    "DISPUTE_ACTIONS",
    "DISPUTE_SIGNERS",
    "EDGE_KEY_ACTIONS",
    "MANIFEST_ACTIONS",
    "MAX_ENTRY_SIZE",
    "RATE_TERMS",
    "SCOPES",
    "SHARE_TERMS",
    "TERMS",
    "Creator",
    "Dispute",
    "EdgeKey",
    "Entry",
    "JSONValue",
    "Manifest",
    "Receipt",
    "Revenue",
    "Statement",
    "canonical_json",
    "decode_entry",
    "encode_entry",
    "parse_canonical_json",
    "sign_creator",
    "sign_dispute",
    "sign_edge_key",
    "sign_manifest",
    "sign_receipt",
    "sign_revenue",
    "sign_statement",
    "signed_message",
    "verify_creator",
    "verify_dispute",
    "verify_edge_key",
    "verify_manifest",
    "verify_receipt",
    "verify_revenue",
    "verify_statement",
]

JSONValue: TypeAlias = "str | int | bool | list[JSONValue] | dict[str, JSONValue]"

MAX_SAFE_INTEGER = (1 << 53) - 1
"""RFC 8785 serialises numbers as IEEE doubles; integers beyond this would not round-trip."""

SCOPES = ("training", "inference", "preview")
CACHE_STATUSES = ("hit", "miss")
EDGE_KEY_ACTIONS = ("register", "rotate", "revoke")

_ID = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,255}")  # printable ASCII, no space or '+': a key name
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_MAX_SAMPLE_DENOMINATOR = 1 << 32

_T = TypeVar("_T", str, int, list[object])
_S = TypeVar("_S", "Creator", "Manifest", "Statement", "Dispute", "Revenue")


# ---------------------------------------------------------------------------------------------
# Canonical JSON (RFC 8785 for the values meterlog allows).


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _canonical(value: object, path: str) -> JSONValue:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise MalformedError(path, f"integer {value} is outside +-(2**53 - 1)")
        return value
    if isinstance(value, float):
        raise MalformedError(path, "floats are not allowed; use integers or strings")
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise MalformedError(path, f"object key {key!r} is not a string")
        return {k: _canonical(value[k], f"{path}.{k}") for k in sorted(value, key=_utf16_key)}
    raise MalformedError(path, f"{type(value).__name__} is not allowed in an entry")


def canonical_json(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value made of str, int, bool, list, dict."""
    text = json.dumps(
        _canonical(value, "$"), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError("$", "a string holds a lone surrogate") from exc


_FIELDS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)

try:  # an accelerator, not a dependency: the log server installs it, verifiers need not
    import orjson as _orjson
except ImportError:  # pragma: no cover - tests run both ways (see tests/tlog/test_entry.py)
    _orjson = None  # type: ignore[assignment]


def _fields_json(fields: Mapping[str, JSONValue]) -> bytes:
    """The canonical JSON of an entry's fields, which its ``__post_init__`` has checked.

    What :func:`canonical_json` returns for them, without walking them again: every field
    name is ASCII, so Python's code-point key order is RFC 8785's UTF-16 order, and every
    value is a checked string, an integer within +-(2**53 - 1) or a list of such integers.

    With orjson installed it writes them, ten times as fast; for such fields its output is
    the standard library's byte for byte (sorted keys, no whitespace, UTF-8, the same
    escapes), which the tests check on every kind of entry.
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(fields, option=_orjson.OPT_SORT_KEYS)
        except _orjson.JSONEncodeError as exc:
            raise MalformedError("$", "a string holds a lone surrogate") from exc
    text = _FIELDS_ENCODER.encode(fields)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError("$", "a string holds a lone surrogate") from exc


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedError(f"$.{key}", "duplicate key")
        obj[key] = value
    return obj


def _no_constant(text: str) -> object:
    raise MalformedError("$", f"{text} is not JSON")


def parse_canonical_json(data: bytes, field: str = "entry") -> dict[str, object]:
    """Parse a JSON object that must already be in canonical form; MalformedError otherwise."""
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
        # Floats, out-of-range integers and lone surrogates are found while re-encoding, with
        # their "$..." paths; inside the try, so the paths are renamed to start at `field`.
        canonical = canonical_json(value) if isinstance(value, dict) else None
    except MalformedError as exc:
        raise MalformedError(field + exc.field.removeprefix("$"), exc.reason) from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedError(field, f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedError(field, "not a JSON object")
    if canonical != data:
        raise MalformedError(field, "not in canonical form (RFC 8785: sorted keys, no spaces)")
    return value


# ---------------------------------------------------------------------------------------------
# Field checks shared by the kinds.


def _check_text(value: object, field: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedError(field, f"{value!r} does not match {pattern.pattern}")


def _check_int(value: object, field: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedError(field, f"{value!r} is not an integer")
    if not minimum <= value <= MAX_SAFE_INTEGER:
        raise MalformedError(field, f"{value} is outside {minimum}..2**53-1")


def _check_choice(value: object, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MalformedError(field, f"{value!r} is not one of {', '.join(choices)}")


def _check_signature(value: bytes, field: str) -> None:
    if value and len(value) != 64:
        raise MalformedError(field, f"{len(value)} bytes, not a 64-byte Ed25519 signature")


_ABSENT = object()


class _Reader:
    """Takes typed fields out of a decoded object; anything left over is an unknown field.

    Only types are checked here; values are checked by the entry's ``__post_init__``. The
    object comes from a JSON parser, so its values are exactly str, int, bool, list, dict or
    None (a bool is not an int here, nor None a missing field). The reader consumes it.
    """

    def __init__(self, obj: dict[str, object], kind: str) -> None:
        self._obj = obj
        self._kind = kind

    def take_kind(self) -> None:
        del self._obj["kind"]

    def _wrong(self, name: str, value: object, kind: type) -> NoReturn:
        if value is _ABSENT:
            raise MalformedError(f"{self._kind}.{name}", "missing")
        raise MalformedError(f"{self._kind}.{name}", f"{value!r} is not {kind.__name__}")

    def _take(self, name: str, kind: type[_T]) -> _T:
        value = self._obj.pop(name, _ABSENT)
        if type(value) is not kind:
            self._wrong(name, value, kind)
        return value

    def text(self, name: str) -> str:
        value = self._obj.pop(name, _ABSENT)
        if type(value) is not str:
            self._wrong(name, value, str)
        return value

    def integer(self, name: str) -> int:
        value = self._obj.pop(name, _ABSENT)
        if type(value) is not int:
            self._wrong(name, value, int)
        return value

    def optional_text(self, name: str) -> str | None:
        return self.text(name) if name in self._obj else None

    def optional_integer(self, name: str) -> int | None:
        return self.integer(name) if name in self._obj else None

    def integer_pair(self, name: str) -> tuple[int, int]:
        value = self._take(name, list)
        if len(value) != 2:
            raise MalformedError(f"{self._kind}.{name}", "not a pair [a, b]")
        pair: list[int] = []
        for i, item in enumerate(value):
            if type(item) is not int:
                raise MalformedError(f"{self._kind}.{name}[{i}]", f"{item!r} is not int")
            pair.append(item)
        return pair[0], pair[1]

    def text_list(self, name: str) -> list[str]:
        """A list of strings (its values are checked by the entry)."""
        value = self._take(name, list)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise MalformedError(f"{self._kind}.{name}[{i}]", f"{item!r} is not str")
        return value  # type: ignore[return-value] # every item was checked above

    def text_map(self, name: str) -> dict[str, str]:
        """An object of string values (its names and values are checked by the entry)."""
        if name not in self._obj:
            raise MalformedError(f"{self._kind}.{name}", "missing")
        value = self._obj.pop(name)
        if not isinstance(value, dict):
            raise MalformedError(f"{self._kind}.{name}", f"{value!r} is not an object")
        for key, item in value.items():
            if not isinstance(item, str):
                raise MalformedError(f"{self._kind}.{name}.{key}", f"{item!r} is not str")
        return value

    def key_id(self, name: str) -> str:
        """A key ID, which every logged (signed) entry has."""
        value = self.text(name)
        _check_text(value, f"{self._kind}.{name}", _KEY_ID)
        return value

    def signature(self) -> bytes:
        signature = decode_b64(self.text("signature"), f"{self._kind}.signature")
        if not signature:
            # encode_entry never writes an unsigned entry, so decode_entry must not accept one.
            raise MalformedError(
                f"{self._kind}.signature", "empty: unsigned entries are not logged"
            )
        return signature

    def finish(self) -> None:
        if self._obj:
            unknown = sorted(self._obj)[0]
            raise MalformedError(f"{self._kind}.{unknown}", "unknown field")


# ---------------------------------------------------------------------------------------------
# The kinds.


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery of one piece of content to one consumer, as the edge signed it.

    ``signature`` is empty until :func:`sign_receipt`; ``logged_at_ms`` is None until the
    log sequences the receipt. ``sample_rate`` is the fraction (numerator, denominator) of
    deliveries the edge records; a receipt then stands for denominator/numerator deliveries.
    """

    kind: ClassVar[str] = "receipt"

    request_id: str
    edge: str
    consumer_id: str
    token_id: str
    scope: str
    content_id: str
    creator_id: str
    manifest: str
    bytes_sent: int
    cache: str
    served_at_ms: int
    job_id: str | None = None
    sample_rate: tuple[int, int] = (1, 1)
    key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        # Receipts are checked by the million: every string field in one match (no pattern
        # takes a newline), and only if that fails one by one, to name the field.
        texts: tuple[str, ...] = (
            self.request_id, self.edge, self.consumer_id, self.token_id, self.creator_id,
            self.content_id, self.manifest, self.scope, self.cache, self.key_id,
        )  # fmt: skip
        if self.job_id is not None:
            texts += (self.job_id,)
        try:
            joined: str | None = "\n".join(texts)
        except TypeError:  # not all strings
            joined = None
        if joined is None or _RECEIPT_TEXTS[len(texts)].fullmatch(joined) is None:
            for value, (name, pattern) in zip(texts, _RECEIPT_PATTERNS, strict=False):
                _check_text(value, f"receipt.{name}", pattern)
        sent, served, rate = self.bytes_sent, self.served_at_ms, self.sample_rate
        if not (
            type(sent) is int
            and type(served) is int
            and min(sent, served) >= 0
            and max(sent, served) <= MAX_SAFE_INTEGER
        ):
            _check_int(sent, "receipt.bytes_sent")
            _check_int(served, "receipt.served_at_ms")
        if rate != (1, 1) or type(rate[0]) is not int or type(rate[1]) is not int:
            _check_sample_rate(rate)  # (nearly every receipt is of every delivery)
        _check_signature(self.signature, "receipt.signature")
        if self.logged_at_ms is not None:
            _check_int(self.logged_at_ms, "receipt.logged_at_ms")

    def signed_fields(self) -> dict[str, JSONValue]:
        """Every field the edge signs: all but ``signature`` and ``logged_at_ms``."""
        fields: dict[str, JSONValue] = {
            "kind": self.kind,
            "request_id": self.request_id,
            "edge": self.edge,
            "key_id": self.key_id,
            "consumer_id": self.consumer_id,
            "token_id": self.token_id,
            "scope": self.scope,
            "content_id": self.content_id,
            "creator_id": self.creator_id,
            "manifest": self.manifest,
            "bytes_sent": self.bytes_sent,
            "cache": self.cache,
            "served_at_ms": self.served_at_ms,
            "sample_rate": list(self.sample_rate),
        }
        if self.job_id is not None:
            fields["job_id"] = self.job_id
        return fields

    @classmethod
    def _read(cls, r: _Reader) -> Receipt:
        return cls(
            request_id=r.text("request_id"),
            edge=r.text("edge"),
            key_id=r.key_id("key_id"),
            consumer_id=r.text("consumer_id"),
            token_id=r.text("token_id"),
            job_id=r.optional_text("job_id"),
            scope=r.text("scope"),
            content_id=r.text("content_id"),
            creator_id=r.text("creator_id"),
            manifest=r.text("manifest"),
            bytes_sent=r.integer("bytes_sent"),
            cache=r.text("cache"),
            served_at_ms=r.integer("served_at_ms"),
            sample_rate=r.integer_pair("sample_rate"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


def _choice(choices: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, choices)))


_RECEIPT_PATTERNS = (
    ("request_id", _REQUEST_ID), ("edge", _ID), ("consumer_id", _ID), ("token_id", _ID),
    ("creator_id", _ID), ("content_id", _DIGEST), ("manifest", _DIGEST),
    ("scope", _choice(SCOPES)), ("cache", _choice(CACHE_STATUSES)),
    ("key_id", re.compile(f"(?:{_KEY_ID.pattern})?")), ("job_id", _ID),
)  # fmt: skip
"""A receipt's strings and their patterns. The key ID is empty until the receipt is signed;
the job ID, last, may be absent."""
_RECEIPT_TEXTS = {
    n: re.compile("\n".join(f"(?:{p.pattern})" for _, p in _RECEIPT_PATTERNS[:n]))
    for n in (len(_RECEIPT_PATTERNS) - 1, len(_RECEIPT_PATTERNS))
}
"""All of them joined by newlines, without and with a job ID."""


def _check_sample_rate(rate: object) -> None:
    field = "receipt.sample_rate"
    if not (isinstance(rate, tuple) and len(rate) == 2):
        raise MalformedError(field, "not (numerator, denominator)")
    numerator, denominator = rate
    _check_int(numerator, f"{field}[0]", minimum=1)
    _check_int(denominator, f"{field}[1]", minimum=1)
    if not numerator <= denominator <= _MAX_SAMPLE_DENOMINATOR:
        raise MalformedError(field, "must be a fraction in (0, 1] with denominator <= 2**32")
    if math.gcd(numerator, denominator) != 1:
        raise MalformedError(field, f"{numerator}/{denominator} is not in lowest terms")


@dataclass(frozen=True, slots=True)
class EdgeKey:
    """A statement by the operator about one edge key and its validity window.

    ``key`` is the edge's verifier key string (Ed25519, named after ``edge``); receipts it
    signs are valid when served in ``[valid_from_ms, valid_until_ms)``. ``register`` opens a
    window; ``rotate`` opens one for a new key and retires the key whose ID is ``replaces``
    from the new key's ``valid_from_ms``; ``revoke`` closes a key's window at
    ``valid_until_ms`` (which may lie in the past). The latest statement about a key wins.
    """

    kind: ClassVar[str] = "edge_key"

    action: str
    edge: str
    key: str
    valid_from_ms: int
    valid_until_ms: int | None = None
    replaces: str | None = None
    operator_key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_choice(self.action, "edge_key.action", EDGE_KEY_ACTIONS)
        _check_text(self.edge, "edge_key.edge", _ID)
        verifier = _parse_key(self.key, "edge_key.key")
        if verifier.name != self.edge:
            raise MalformedError("edge_key.key", f"names {verifier.name!r}, not {self.edge!r}")
        _check_int(self.valid_from_ms, "edge_key.valid_from_ms")
        if self.valid_until_ms is not None:
            _check_int(self.valid_until_ms, "edge_key.valid_until_ms")
            if self.valid_until_ms <= self.valid_from_ms:
                raise MalformedError("edge_key.valid_until_ms", "not after valid_from_ms")
        if self.action == "revoke" and self.valid_until_ms is None:
            raise MalformedError("edge_key.valid_until_ms", "a revocation needs an end")
        if (self.action == "rotate") != (self.replaces is not None):
            raise MalformedError("edge_key.replaces", "required for rotate, and only there")
        if self.replaces is not None:
            _check_text(self.replaces, "edge_key.replaces", _KEY_ID)
        if self.operator_key_id:
            _check_text(self.operator_key_id, "edge_key.operator_key_id", _KEY_ID)
        _check_signature(self.signature, "edge_key.signature")
        if self.logged_at_ms is not None:
            _check_int(self.logged_at_ms, "edge_key.logged_at_ms")

    @property
    def verifier(self) -> Verifier:
        """The edge key itself, ready to verify receipts."""
        return parse_vkey(self.key)

    def signed_fields(self) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {
            "kind": self.kind,
            "action": self.action,
            "edge": self.edge,
            "key": self.key,
            "valid_from_ms": self.valid_from_ms,
            "operator_key_id": self.operator_key_id,
        }
        if self.valid_until_ms is not None:
            fields["valid_until_ms"] = self.valid_until_ms
        if self.replaces is not None:
            fields["replaces"] = self.replaces
        return fields

    @classmethod
    def _read(cls, r: _Reader) -> EdgeKey:
        return cls(
            action=r.text("action"),
            edge=r.text("edge"),
            key=r.text("key"),
            valid_from_ms=r.integer("valid_from_ms"),
            valid_until_ms=r.optional_integer("valid_until_ms"),
            replaces=r.optional_text("replaces"),
            operator_key_id=r.key_id("operator_key_id"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


def _parse_key(vkey: str, field: str) -> Verifier:
    try:
        verifier = parse_vkey(vkey)
    except MalformedError as exc:
        raise MalformedError(field, exc.reason) from exc
    if verifier.alg != ALG_ED25519:
        raise MalformedError(field, "not an Ed25519 (type 0x01) key")
    return verifier


# ---------------------------------------------------------------------------------------------
# The catalog and billing kinds: creators, manifests, statements, disputes, declared revenue.

_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?")
_LICENSE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]{1,2000}")
_REASON = re.compile(r"[\x20-\x7e]{1,1000}")
_MAX_RELEASED = 256

MANIFEST_ACTIONS = ("publish", "withdraw")
DISPUTE_ACTIONS = ("open", "close")
DISPUTE_SIGNERS = ("creator", "operator")
RATE_TERMS = SCOPES
"""Terms that price one billable event of that scope (a decimal in major units)."""
SHARE_TERMS = ("savings_share", "revenue_share")
"""Terms that are a share in [0, 1]: of the cache savings on hits, of declared revenue."""
TERMS = (*RATE_TERMS, "per_gib", *SHARE_TERMS, "upfront")
"""Every payout term a manifest may state; any non-empty subset, each a decimal string."""


def _check_decimal(value: object, field: str, *, share: bool = False) -> None:
    """A non-negative decimal string (at most 18 integer and 12 fraction digits); a share
    is at most 1. Money and rates are never floats."""
    _check_text(value, field, _DECIMAL)
    if share:
        assert isinstance(value, str)  # noqa: S101 -- checked just above
        whole, _, fraction = value.partition(".")
        if int(whole) > 1 or (whole == "1" and fraction.strip("0")):
            raise MalformedError(field, f"{value} is not a share in [0, 1]")


def _check_scopes(scopes: object, field: str) -> None:
    if not isinstance(scopes, tuple) or not scopes:
        raise MalformedError(field, "at least one scope is needed")
    for i, scope in enumerate(scopes):
        _check_choice(scope, f"{field}[{i}]", SCOPES)
    if list(scopes) != sorted(set(scopes)):
        raise MalformedError(field, "scopes must be sorted and listed once each")


def _check_terms(terms: object, field: str) -> None:
    if not isinstance(terms, tuple) or not terms:
        raise MalformedError(field, f"at least one of {', '.join(TERMS)} is needed")
    names = []
    for pair in terms:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise MalformedError(field, "not (name, decimal) pairs")
        name, value = pair
        _check_choice(name, field, TERMS)
        _check_decimal(value, f"{field}.{name}", share=name in SHARE_TERMS)
        names.append(name)
    if names != sorted(set(names)):
        raise MalformedError(field, "terms must be sorted by name and stated once each")


def _check_digests(values: object, field: str, maximum: int) -> None:
    if not isinstance(values, tuple) or len(values) > maximum:
        raise MalformedError(field, f"not a list of at most {maximum} digests")
    for i, value in enumerate(values):
        _check_text(value, f"{field}[{i}]", _DIGEST)
    if list(values) != sorted(set(values)):
        raise MalformedError(field, "digests must be sorted and listed once each")


def _check_common(
    kind: str, key_id_field: str, key_id: str, signature: bytes, logged_at_ms: int | None
) -> None:
    """The key ID, signature and logged time every signed kind carries."""
    if key_id:
        _check_text(key_id, f"{kind}.{key_id_field}", _KEY_ID)
    _check_signature(signature, f"{kind}.signature")
    if logged_at_ms is not None:
        _check_int(logged_at_ms, f"{kind}.logged_at_ms")


@dataclass(frozen=True, slots=True)
class Creator:
    """The operator registers a creator: its key (named ``creator_id``) and payout currency.

    The latest ``creator`` entry about a creator_id wins: a new one rotates the key or
    changes the currency from its index on. Manifests and disputes are signed by this key.
    ``follows`` is the index of the registration a new one replaces (absent for the first):
    the log refuses one that does not follow the creator's registration in force, so an
    old registration re-posted cannot bring back a key or currency it replaced.
    """

    kind: ClassVar[str] = "creator"

    creator_id: str
    key: str
    currency: str
    follows: int | None = None
    operator_key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_text(self.creator_id, "creator.creator_id", _ID)
        verifier = _parse_key(self.key, "creator.key")
        if verifier.name != self.creator_id:
            raise MalformedError("creator.key", f"names {verifier.name!r}, not the creator")
        _check_text(self.currency, "creator.currency", _CURRENCY)
        if self.follows is not None:
            _check_int(self.follows, "creator.follows")
        _check_common(
            "creator", "operator_key_id", self.operator_key_id, self.signature, self.logged_at_ms
        )

    @property
    def verifier(self) -> Verifier:
        """The creator's key, ready to verify manifests and disputes."""
        return parse_vkey(self.key)

    def signed_fields(self) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {
            "kind": self.kind,
            "creator_id": self.creator_id,
            "key": self.key,
            "currency": self.currency,
            "operator_key_id": self.operator_key_id,
        }
        if self.follows is not None:
            fields["follows"] = self.follows
        return fields

    @classmethod
    def _read(cls, r: _Reader) -> Creator:
        return cls(
            creator_id=r.text("creator_id"),
            key=r.text("key"),
            currency=r.text("currency"),
            follows=r.optional_integer("follows"),
            operator_key_id=r.key_id("operator_key_id"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """A creator publishes (or withdraws) one version of one piece of content.

    ``manifest`` is the digest of the creator's full manifest document (what receipts name);
    ``version`` counts the content's versions from 1. ``publish`` states the licensed
    ``scopes``, the payout ``terms`` (``(name, decimal)`` pairs sorted by name; see
    :data:`TERMS`) and the ``license`` URI. ``withdraw`` names a published version and stops
    its use for receipts served from the withdrawal's ``logged_at_ms`` on; it rewrites
    nothing logged before.
    """

    kind: ClassVar[str] = "manifest"

    action: str
    creator_id: str
    content_id: str
    version: int
    manifest: str
    scopes: tuple[str, ...] = ()
    terms: tuple[tuple[str, str], ...] = ()
    license: str | None = None
    key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_choice(self.action, "manifest.action", MANIFEST_ACTIONS)
        _check_text(self.creator_id, "manifest.creator_id", _ID)
        _check_text(self.content_id, "manifest.content_id", _DIGEST)
        _check_int(self.version, "manifest.version", minimum=1)
        _check_text(self.manifest, "manifest.manifest", _DIGEST)
        if self.action == "publish":
            _check_scopes(self.scopes, "manifest.scopes")
            _check_terms(self.terms, "manifest.terms")
            if self.license is None:
                raise MalformedError("manifest.license", "a publication needs its license URI")
            _check_text(self.license, "manifest.license", _LICENSE)
        elif self.scopes or self.terms or self.license is not None:
            raise MalformedError("manifest.action", "a withdrawal names a version, nothing more")
        _check_common("manifest", "key_id", self.key_id, self.signature, self.logged_at_ms)

    def term(self, name: str) -> str | None:
        """The decimal string of one payout term, if the manifest states it."""
        for key, value in self.terms:
            if key == name:
                return value
        return None

    def signed_fields(self) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {
            "kind": self.kind,
            "action": self.action,
            "creator_id": self.creator_id,
            "content_id": self.content_id,
            "version": self.version,
            "manifest": self.manifest,
            "key_id": self.key_id,
        }
        if self.action == "publish":
            fields["scopes"] = list(self.scopes)
            fields["terms"] = dict(self.terms)
            fields["license"] = self.license  # type: ignore[assignment] # set for publish
        return fields

    @classmethod
    def _read(cls, r: _Reader) -> Manifest:
        action = r.text("action")
        publish = action == "publish"
        return cls(
            action=action,
            creator_id=r.text("creator_id"),
            content_id=r.text("content_id"),
            version=r.integer("version"),
            manifest=r.text("manifest"),
            scopes=tuple(r.text_list("scopes")) if publish else (),
            terms=tuple(sorted(r.text_map("terms").items())) if publish else (),
            license=r.text("license") if publish else None,
            key_id=r.key_id("key_id"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


@dataclass(frozen=True, slots=True)
class Statement:
    """A billing statement for one creator, as logged: its digest and the money it carries.

    ``digest`` is the SHA-256 of the statement document (canonical JSON, ``billing``'s
    output). The fields beside it are what the next run needs from the log alone: the
    committed range ``[range_start, range_end)`` and the period's close (the checkpoint's
    signed time), the creator's ``previous`` statement, how many ``lines`` it has (disputes
    name one), what was paid, carried over below the minimum payout, and held in reserve
    until ``reserve_release_ms``, and which earlier statements' reserves it ``released``.
    Signed by the billing key, whose verifier key string is ``billing_key`` (both empty
    until :func:`sign_statement`).
    """

    kind: ClassVar[str] = "statement"

    digest: str
    creator_id: str
    currency: str
    range_start: int
    range_end: int
    period_end_ms: int
    lines: int
    paid_minor: int
    carry_minor: int
    reserve_minor: int
    reserve_release_ms: int
    previous: str | None = None
    released: tuple[str, ...] = ()
    billing_key: str = ""
    key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_text(self.digest, "statement.digest", _DIGEST)
        _check_text(self.creator_id, "statement.creator_id", _ID)
        _check_text(self.currency, "statement.currency", _CURRENCY)
        _check_int(self.range_start, "statement.range_start")
        _check_int(self.range_end, "statement.range_end")
        if self.range_end <= self.range_start:
            raise MalformedError("statement.range_end", "must be after range_start")
        for name in ("period_end_ms", "lines", "paid_minor", "carry_minor", "reserve_minor",
                     "reserve_release_ms"):  # fmt: skip
            _check_int(getattr(self, name), f"statement.{name}")
        if self.billing_key:
            _parse_key(self.billing_key, "statement.billing_key")
        if self.previous is not None:
            _check_text(self.previous, "statement.previous", _DIGEST)
        _check_digests(self.released, "statement.released", _MAX_RELEASED)
        _check_common("statement", "key_id", self.key_id, self.signature, self.logged_at_ms)

    @property
    def verifier(self) -> Verifier:
        """The billing key that signed it."""
        return parse_vkey(self.billing_key)

    def signed_fields(self) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {
            "kind": self.kind,
            "digest": self.digest,
            "creator_id": self.creator_id,
            "currency": self.currency,
            "range_start": self.range_start,
            "range_end": self.range_end,
            "period_end_ms": self.period_end_ms,
            "lines": self.lines,
            "paid_minor": self.paid_minor,
            "carry_minor": self.carry_minor,
            "reserve_minor": self.reserve_minor,
            "reserve_release_ms": self.reserve_release_ms,
            "released": list(self.released),
            "billing_key": self.billing_key,
            "key_id": self.key_id,
        }
        if self.previous is not None:
            fields["previous"] = self.previous
        return fields

    @classmethod
    def _read(cls, r: _Reader) -> Statement:
        return cls(
            digest=r.text("digest"),
            creator_id=r.text("creator_id"),
            currency=r.text("currency"),
            range_start=r.integer("range_start"),
            range_end=r.integer("range_end"),
            period_end_ms=r.integer("period_end_ms"),
            lines=r.integer("lines"),
            paid_minor=r.integer("paid_minor"),
            carry_minor=r.integer("carry_minor"),
            reserve_minor=r.integer("reserve_minor"),
            reserve_release_ms=r.integer("reserve_release_ms"),
            billing_key=r.text("billing_key"),
            previous=r.optional_text("previous"),
            released=tuple(r.text_list("released")),
            key_id=r.key_id("key_id"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


@dataclass(frozen=True, slots=True)
class Dispute:
    """A creator disputes one line of one of its statements, or a dispute is closed.

    ``open`` is signed by the creator (``by`` = ``creator``). ``close`` is signed by the
    creator (a withdrawal) or by the operator (``by`` = ``operator``: resolved). While a
    dispute on a statement is open, that statement's reserve is not released.

    ``follows`` binds the entry to the state it changes: the index of the line's latest
    dispute entry, which it follows. An ``open`` names the line's latest ``close`` (and
    leaves ``follows`` out the first time the line is disputed); a ``close`` names the
    ``open`` it closes. The log refuses a dispute that does not follow the line's latest
    entry, so an old one re-posted cannot open or close the line again.
    """

    kind: ClassVar[str] = "dispute"

    action: str
    creator_id: str
    statement: str
    line: int
    reason: str
    by: str = "creator"
    follows: int | None = None
    key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_choice(self.action, "dispute.action", DISPUTE_ACTIONS)
        _check_text(self.creator_id, "dispute.creator_id", _ID)
        _check_text(self.statement, "dispute.statement", _DIGEST)
        _check_int(self.line, "dispute.line", minimum=1)
        _check_text(self.reason, "dispute.reason", _REASON)
        _check_choice(self.by, "dispute.by", DISPUTE_SIGNERS)
        if self.action == "open" and self.by != "creator":
            raise MalformedError("dispute.by", "only the creator opens a dispute")
        if self.follows is not None:
            _check_int(self.follows, "dispute.follows")
        elif self.action == "close":
            raise MalformedError("dispute.follows", "missing: a close names the open it closes")
        _check_common("dispute", "key_id", self.key_id, self.signature, self.logged_at_ms)

    def signed_fields(self) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {
            "kind": self.kind,
            "action": self.action,
            "creator_id": self.creator_id,
            "statement": self.statement,
            "line": self.line,
            "reason": self.reason,
            "by": self.by,
            "key_id": self.key_id,
        }
        if self.follows is not None:
            fields["follows"] = self.follows
        return fields

    @classmethod
    def _read(cls, r: _Reader) -> Dispute:
        return cls(
            action=r.text("action"),
            creator_id=r.text("creator_id"),
            statement=r.text("statement"),
            line=r.integer("line"),
            reason=r.text("reason"),
            by=r.text("by"),
            follows=r.optional_integer("follows"),
            key_id=r.key_id("key_id"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


@dataclass(frozen=True, slots=True)
class Revenue:
    """A buyer's revenue for a period, declared under its contract and signed by the operator.

    Buyers hold no key in the log; the operator receives their revenue reports and attests
    them, and the buyer (and every creator) can see each declaration in the log. Revenue-share
    terms split it over the consumer's billable use in the billing run whose range holds it.
    ``reference`` (the buyer's report or invoice) is unique per consumer.
    """

    kind: ClassVar[str] = "revenue"

    consumer_id: str
    currency: str
    amount_minor: int
    period_start_ms: int
    period_end_ms: int
    reference: str
    operator_key_id: str = ""
    signature: bytes = b""
    logged_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_text(self.consumer_id, "revenue.consumer_id", _ID)
        _check_text(self.currency, "revenue.currency", _CURRENCY)
        _check_int(self.amount_minor, "revenue.amount_minor")
        _check_int(self.period_start_ms, "revenue.period_start_ms")
        _check_int(self.period_end_ms, "revenue.period_end_ms")
        if self.period_end_ms <= self.period_start_ms:
            raise MalformedError("revenue.period_end_ms", "must be after period_start_ms")
        _check_text(self.reference, "revenue.reference", _ID)
        _check_common(
            "revenue", "operator_key_id", self.operator_key_id, self.signature, self.logged_at_ms
        )

    def signed_fields(self) -> dict[str, JSONValue]:
        return {
            "kind": self.kind,
            "consumer_id": self.consumer_id,
            "currency": self.currency,
            "amount_minor": self.amount_minor,
            "period_start_ms": self.period_start_ms,
            "period_end_ms": self.period_end_ms,
            "reference": self.reference,
            "operator_key_id": self.operator_key_id,
        }

    @classmethod
    def _read(cls, r: _Reader) -> Revenue:
        return cls(
            consumer_id=r.text("consumer_id"),
            currency=r.text("currency"),
            amount_minor=r.integer("amount_minor"),
            period_start_ms=r.integer("period_start_ms"),
            period_end_ms=r.integer("period_end_ms"),
            reference=r.text("reference"),
            operator_key_id=r.key_id("operator_key_id"),
            signature=r.signature(),
            logged_at_ms=r.optional_integer("logged_at_ms"),
        )


Entry: TypeAlias = Receipt | EdgeKey | Creator | Manifest | Statement | Dispute | Revenue
_KINDS: dict[str, type[Entry]] = {
    cls.kind: cls for cls in (Receipt, EdgeKey, Creator, Manifest, Statement, Dispute, Revenue)
}


def encode_entry(entry: Entry, *, logged_at_ms: int | None = None) -> bytes:
    """The entry's leaf bytes: canonical JSON of its signed fields, signature, logged time.

    ``logged_at_ms`` is for the log sequencing an entry that has none yet: the bytes are
    those of ``dataclasses.replace(entry, logged_at_ms=logged_at_ms)``, without a copy.
    """
    if not entry.signature:
        raise MalformedError(f"{entry.kind}.signature", "an unsigned entry cannot be logged")
    if logged_at_ms is None:
        logged_at_ms = entry.logged_at_ms
    elif entry.logged_at_ms is not None:
        raise MalformedError(f"{entry.kind}.logged_at_ms", "is already set")
    else:
        _check_int(logged_at_ms, f"{entry.kind}.logged_at_ms")
    fields = entry.signed_fields()
    fields["signature"] = encode_b64(entry.signature)
    if logged_at_ms is not None:
        fields["logged_at_ms"] = logged_at_ms
    data = _fields_json(fields)
    if len(data) > MAX_ENTRY_SIZE:
        raise MalformedError(entry.kind, f"{len(data)} bytes, over {MAX_ENTRY_SIZE}")
    return data


def decode_entry(data: bytes) -> Entry:
    """Parse leaf bytes into an entry, strictly; encode_entry(decode_entry(b)) == b.

    The fast way first: parse, check that ``data`` is canonical, read. With orjson the
    parsed object is written back before it is read, and must give back exactly ``data``
    (sorted keys, no spaces, and no duplicate key: orjson keeps one of them); the reading
    then takes only strings, integers, and lists and objects of them, which orjson writes
    as RFC 8785 does. A receipt is read by :func:`_receipt_of`. Without orjson, the entry
    read is encoded again and compared. Anything else goes the strict way, which names what
    is wrong.
    """
    if len(data) > MAX_ENTRY_SIZE:
        raise MalformedError("entry", f"{len(data)} bytes, over {MAX_ENTRY_SIZE}")
    try:
        if _orjson is not None:
            value = _orjson.loads(data)
            if type(value) is dict and _fields_json(value) == data:
                if value.get("kind") == "receipt":
                    return _receipt_of(value)
                return _read_entry(value)
        else:
            value = json.loads(data)
            if isinstance(value, dict):
                entry = _read_entry(value)
                if encode_entry(entry) == data:
                    return entry
    except (MalformedError, KeyError, TypeError, ValueError, RecursionError):
        pass  # the strict way below raises with the field named
    return _read_entry(parse_canonical_json(data))


def _read_entry(obj: dict[str, object]) -> Entry:
    kind = obj.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedError("entry.kind", f"{kind!r} is not one of {', '.join(_KINDS)}")
    reader = _Reader(obj, cls.kind)
    reader.take_kind()
    entry = cls._read(reader)
    reader.finish()
    return entry


_RECEIPT_VALUES = operator.itemgetter(
    "request_id", "edge", "consumer_id", "token_id", "scope", "content_id", "creator_id",
    "manifest", "bytes_sent", "cache", "served_at_ms",
)  # fmt: skip
"""Receipt's first fields, in its order (a call by position is twice as fast)."""
_RECEIPT_FIELDS = 15
"""A receipt's fields in JSON, but for the two optional ones."""


def _receipt_of(obj: dict[str, Any]) -> Receipt:
    """The receipt a parsed object of kind receipt holds.

    decode_entry's fast way for the entries logs hold by the million: ``Receipt._read``
    without the reader, whose type checks ``Receipt.__post_init__`` makes again with the
    values' own. Only what ``__post_init__`` cannot see is checked here: a missing or
    unknown field, a null given for an optional one, a key ID or signature left empty, the
    JSON types of the two fields that are converted. Anything wrong raises (MalformedError,
    KeyError, TypeError or ValueError) and decode_entry takes the strict way, which names
    it; tests/tlog/test_entry.py holds the two ways to the same answers."""
    job_id, logged_at_ms = obj.get("job_id", _ABSENT), obj.get("logged_at_ms", _ABSENT)
    rate, key_id, signature = obj["sample_rate"], obj["key_id"], obj["signature"]
    if (
        len(obj) != _RECEIPT_FIELDS + (job_id is not _ABSENT) + (logged_at_ms is not _ABSENT)
        or job_id is None
        or logged_at_ms is None
        or type(rate) is not list
        or not key_id
        or type(signature) is not str
        or not signature
    ):
        raise MalformedError("receipt", "a field is missing, unknown, null or empty")
    values: tuple[Any, ...] = (
        *_RECEIPT_VALUES(obj),
        None if job_id is _ABSENT else job_id,
        tuple(rate),
        key_id,
        decode_b64(signature, "receipt.signature"),
        None if logged_at_ms is _ABSENT else logged_at_ms,
    )
    return Receipt(*values)


# ---------------------------------------------------------------------------------------------
# Signing and verification.


def signed_message(entry: Entry) -> bytes:
    """The bytes an entry's signature covers: the canonical JSON of its signed fields."""
    return _fields_json(entry.signed_fields())


def _key_id_hex(verifier: Verifier) -> str:
    return f"{verifier.key_id:08x}"


def sign_receipt(receipt: Receipt, key: SigningKey) -> Receipt:
    """The receipt signed by the edge ``key`` (named after the edge), with its key ID set."""
    if key.name != receipt.edge:
        raise MalformedError("receipt.edge", f"{receipt.edge!r} is not the key's name {key.name!r}")
    key_id = _key_id_hex(key.verifier())
    fields = receipt.signed_fields()
    fields["key_id"] = key_id  # what signed_fields() gives once key_id is set
    signature = key.sign(_fields_json(fields))
    return dataclasses.replace(receipt, key_id=key_id, signature=signature)


def verify_receipt(receipt: Receipt, edge_key: Verifier) -> None:
    """Check the edge's signature on a receipt; raises VerificationError or MalformedError."""
    _verify(receipt, edge_key, receipt.edge, receipt.key_id)


def sign_edge_key(edge_key: EdgeKey, operator: SigningKey) -> EdgeKey:
    """The edge-key statement signed by the operator key."""
    key_id = _key_id_hex(operator.verifier())
    fields = edge_key.signed_fields()
    fields["operator_key_id"] = key_id  # what signed_fields() gives once the ID is set
    signature = operator.sign(_fields_json(fields))
    return dataclasses.replace(edge_key, operator_key_id=key_id, signature=signature)


def verify_edge_key(edge_key: EdgeKey, operator: Verifier) -> None:
    """Check the operator's signature on an edge-key statement."""
    _verify(edge_key, operator, operator.name, edge_key.operator_key_id)


def _verify(entry: Entry, key: Verifier, name: str, key_id: str) -> None:
    if key.alg != ALG_ED25519:
        raise MalformedError("key", "entries are signed with Ed25519 (type 0x01) keys")
    if key.name != name or _key_id_hex(key) != key_id:
        raise UnknownKeyError(
            f"{entry.kind} is signed by {name}+{key_id or '?'}, "
            f"not by the key given, {key.name}+{_key_id_hex(key)}"
        )
    if not entry.signature:
        raise MalformedError(f"{entry.kind}.signature", "missing")
    key.verify_message(signed_message(entry), entry.signature)


def _signed(unsigned: _S, key: SigningKey) -> _S:
    """``unsigned`` (its key ID set, its signature empty) signed by ``key``."""
    signature = key.sign(_fields_json(unsigned.signed_fields()))
    return dataclasses.replace(unsigned, signature=signature)


def sign_creator(creator: Creator, operator: SigningKey) -> Creator:
    """The creator registration signed by the operator key."""
    key_id = _key_id_hex(operator.verifier())
    return _signed(dataclasses.replace(creator, operator_key_id=key_id, signature=b""), operator)


def verify_creator(creator: Creator, operator: Verifier) -> None:
    """Check the operator's signature on a creator registration."""
    _verify(creator, operator, operator.name, creator.operator_key_id)


def sign_manifest(manifest: Manifest, key: SigningKey) -> Manifest:
    """The manifest signed by the creator's key (named after the creator)."""
    if key.name != manifest.creator_id:
        raise MalformedError(
            "manifest.creator_id", f"{manifest.creator_id!r} is not the key's name {key.name!r}"
        )
    key_id = _key_id_hex(key.verifier())
    return _signed(dataclasses.replace(manifest, key_id=key_id, signature=b""), key)


def verify_manifest(manifest: Manifest, creator_key: Verifier) -> None:
    """Check the creator's signature on a manifest (``creator_key`` as the log registers it)."""
    _verify(manifest, creator_key, manifest.creator_id, manifest.key_id)


def sign_statement(statement: Statement, billing: SigningKey) -> Statement:
    """The statement entry signed by the billing key, which it names in ``billing_key``."""
    unsigned = dataclasses.replace(
        statement,
        billing_key=format_vkey(billing.verifier()),
        key_id=_key_id_hex(billing.verifier()),
        signature=b"",
    )
    return _signed(unsigned, billing)


def verify_statement(statement: Statement, billing: Verifier) -> None:
    """Check the billing key's signature on a statement entry; ``billing`` must be the key
    the entry names."""
    if format_vkey(billing) != statement.billing_key:
        raise UnknownKeyError(
            f"statement is signed by {statement.billing_key}, not by {format_vkey(billing)}"
        )
    _verify(statement, billing, billing.name, statement.key_id)


def sign_dispute(dispute: Dispute, key: SigningKey) -> Dispute:
    """The dispute signed by the creator's key (``by`` creator) or the operator's."""
    if dispute.by == "creator" and key.name != dispute.creator_id:
        raise MalformedError(
            "dispute.creator_id", f"{dispute.creator_id!r} is not the key's name {key.name!r}"
        )
    key_id = _key_id_hex(key.verifier())
    return _signed(dataclasses.replace(dispute, key_id=key_id, signature=b""), key)


def verify_dispute(dispute: Dispute, key: Verifier) -> None:
    """Check a dispute's signature: by the creator's key, or by the operator's for a close
    the operator signed (``by`` says which)."""
    name = dispute.creator_id if dispute.by == "creator" else key.name
    _verify(dispute, key, name, dispute.key_id)


def sign_revenue(revenue: Revenue, operator: SigningKey) -> Revenue:
    """The revenue declaration signed by the operator key."""
    key_id = _key_id_hex(operator.verifier())
    return _signed(dataclasses.replace(revenue, operator_key_id=key_id, signature=b""), operator)


def verify_revenue(revenue: Revenue, operator: Verifier) -> None:
    """Check the operator's signature on a revenue declaration."""
    _verify(revenue, operator, operator.name, revenue.operator_key_id)
