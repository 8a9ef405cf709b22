"""Log entries: the canonical JSON encoding, and the ``receipt`` and ``edge_key`` kinds.

Owns the bytes of every leaf of a meterlog log. An entry is one canonical JSON object
(RFC 8785: object keys sorted by UTF-16 code units, no insignificant whitespace, strings as
ECMAScript's JSON.stringify writes them, integers only, within +-(2**53 - 1)) of at most
65,535 bytes, the largest an entry bundle can frame. There are no floats and no nulls
anywhere: an absent optional field is left out. Decoding is strict: duplicate keys, floats,
unknown or missing fields, wrong types and any input that is not already canonical are
rejected with the field named. Imports tlog.note, tlog.parsing and tlog.errors.

Kinds (more arrive with later issues):

* ``receipt`` — one delivery, signed by an edge key named after the edge. The signature
  covers the canonical JSON of every field but ``signature`` and ``logged_at_ms``; the log
  adds ``logged_at_ms`` (its own clock), so the leaf binds both times.
* ``edge_key`` — an edge key registered, rotated or revoked, with its validity window,
  signed by the operator key, so every key that may sign receipts is itself in the log.

>>> canonical_json({"b": [1, True, "é"], "a": {}})
b'{"a":{},"b":[1,true,"\\xc3\\xa9"]}'
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

from tlog.errors import MalformedError, UnknownKeyError
from tlog.note import ALG_ED25519, SigningKey, Verifier, parse_vkey
from tlog.parsing import decode_b64, encode_b64
from tlog.tiles import MAX_ENTRY_SIZE

__all__ = [
    "CACHE_STATUSES",
    "EDGE_KEY_ACTIONS",
    "MAX_ENTRY_SIZE",
    "SCOPES",
    "EdgeKey",
    "Entry",
    "JSONValue",
    "Receipt",
    "canonical_json",
    "decode_entry",
    "encode_entry",
    "parse_canonical_json",
    "sign_edge_key",
    "sign_receipt",
    "signed_message",
    "verify_edge_key",
    "verify_receipt",
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


class _Reader:
    """Takes typed fields out of a decoded object; anything left over is an unknown field.

    Only types are checked here; values are checked by the entry's ``__post_init__``.
    """

    def __init__(self, obj: Mapping[str, object], kind: str) -> None:
        self._obj = dict(obj)
        self._kind = kind

    def take_kind(self) -> None:
        del self._obj["kind"]

    def _take(self, name: str, kind: type[_T]) -> _T:
        if name not in self._obj:
            raise MalformedError(f"{self._kind}.{name}", "missing")
        value = self._obj.pop(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise MalformedError(f"{self._kind}.{name}", f"{value!r} is not {kind.__name__}")
        return value

    def text(self, name: str) -> str:
        return self._take(name, str)

    def integer(self, name: str) -> int:
        return self._take(name, int)

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
            if isinstance(item, bool) or not isinstance(item, int):
                raise MalformedError(f"{self._kind}.{name}[{i}]", f"{item!r} is not int")
            pair.append(item)
        return pair[0], pair[1]

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
        _check_text(self.request_id, "receipt.request_id", _REQUEST_ID)
        for name in ("edge", "consumer_id", "token_id", "creator_id"):
            _check_text(getattr(self, name), f"receipt.{name}", _ID)
        if self.job_id is not None:
            _check_text(self.job_id, "receipt.job_id", _ID)
        _check_choice(self.scope, "receipt.scope", SCOPES)
        _check_text(self.content_id, "receipt.content_id", _DIGEST)
        _check_text(self.manifest, "receipt.manifest", _DIGEST)
        _check_int(self.bytes_sent, "receipt.bytes_sent")
        _check_choice(self.cache, "receipt.cache", CACHE_STATUSES)
        _check_int(self.served_at_ms, "receipt.served_at_ms")
        _check_sample_rate(self.sample_rate)
        if self.key_id:
            _check_text(self.key_id, "receipt.key_id", _KEY_ID)
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


Entry: TypeAlias = Receipt | EdgeKey
_KINDS: dict[str, type[Receipt] | type[EdgeKey]] = {"receipt": Receipt, "edge_key": EdgeKey}


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

    The fast way first: Python's JSON parser, the entry's own checks, and the entry encoded
    again, which must give back exactly ``data`` (so ``data`` was canonical, with no duplicate
    or unknown key). Anything else goes the strict way, which names what is wrong.
    """
    if len(data) > MAX_ENTRY_SIZE:
        raise MalformedError("entry", f"{len(data)} bytes, over {MAX_ENTRY_SIZE}")
    try:
        value = json.loads(data) if _orjson is None else _orjson.loads(data)
        if isinstance(value, dict):
            entry = _read_entry(value)
            if encode_entry(entry) == data:
                return entry
    except (MalformedError, ValueError, RecursionError):
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
