"""The headers an edge adds to a delivery: ``X-Provenance`` and ``X-Receipt``.

Owns the text of the two response headers the edge signer's middleware writes, and their
strict parsers, so a buyer's client can read them. Imports tlog.errors and the standard
library only.

``X-Provenance`` says what was delivered and whose it is, the same for every delivery of
one content version::

    X-Provenance: v=1;id=sha256:<hex>;creator=<creator_id>;manifest=sha256:<hex>

``X-Receipt`` names the receipt of this one delivery, which the buyer can fetch from the log
(``GET /v1/receipts/<edge>/<request_id>``) with its proof once it is logged::

    X-Receipt: edge=<edge>;request_id=<request_id>

Parameters are ``key=value``, separated by ``;``, in exactly this order, with no spaces.
Values are printable ASCII; ``%``, ``;``, ``=``, ``,``, ``"`` and ``\\`` in a value are
written ``%XX`` (upper-case hex) and nothing else is, so each header has one spelling.

>>> ref = ReceiptRef("edge-fra1", "req;1")
>>> format_receipt_ref(ref)
'edge=edge-fra1;request_id=req%3B1'
>>> parse_receipt_ref('edge=edge-fra1;request_id=req%3B1') == ref
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlog.errors import MalformedError

__all__ = [
    "PROVENANCE_VERSION",
    "Provenance",
    "ReceiptRef",
    "format_provenance",
    "format_receipt_ref",
    "parse_provenance",
    "parse_receipt_ref",
]

PROVENANCE_VERSION = "1"
_MAX_HEADER = 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ID = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,255}")  # an entry id: printable ASCII, no space or '+'
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # as receipt.request_id
_ESCAPED = frozenset('%;=,"\\')
_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_NEEDS_ESCAPE = re.compile(r'[%;=,"\\]')


def _check(value: str, field: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedError(field, f"{value!r} does not match {pattern.pattern}")


def _quote(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:  # the usual case: ids need no escaping
        return value
    return "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in value)


def _unquote(text: str, field: str) -> str:
    value = _ESCAPE.sub(lambda m: chr(int(m.group()[1:], 16)), text)
    if _quote(value) != text:
        raise MalformedError(field, f"{text!r} is not canonically %-escaped")
    return value


def _params(text: str, header: str, keys: tuple[str, ...]) -> list[str]:
    """The values of ``k1=v1;k2=v2;...`` with exactly ``keys`` in that order, unescaped."""
    if len(text) > _MAX_HEADER:
        raise MalformedError(header, f"longer than {_MAX_HEADER} characters")
    parts = text.split(";")
    if len(parts) != len(keys):
        raise MalformedError(header, f"not {len(keys)} parameters {';'.join(keys)}")
    values = []
    for part, key in zip(parts, keys, strict=True):
        name, sep, value = part.partition("=")
        if not sep or name != key:
            raise MalformedError(header, f"{part!r} where {key}=... belongs")
        values.append(_unquote(value, f"{header}.{key}"))
    return values


@dataclass(frozen=True, slots=True)
class Provenance:
    """What was delivered (``content_id``), whose it is, and the manifest version in force."""

    content_id: str
    creator_id: str
    manifest: str

    def __post_init__(self) -> None:
        _check(self.content_id, "provenance.id", _DIGEST)
        _check(self.creator_id, "provenance.creator", _ID)
        _check(self.manifest, "provenance.manifest", _DIGEST)


def format_provenance(provenance: Provenance) -> str:
    """The ``X-Provenance`` header value."""
    return (
        f"v={PROVENANCE_VERSION};id={provenance.content_id};"
        f"creator={_quote(provenance.creator_id)};manifest={provenance.manifest}"
    )


def parse_provenance(text: str) -> Provenance:
    """Parse an ``X-Provenance`` value strictly (version 1 only)."""
    version, content_id, creator_id, manifest = _params(
        text, "provenance", ("v", "id", "creator", "manifest")
    )
    if version != PROVENANCE_VERSION:
        raise MalformedError("provenance.v", f"version {version!r} is not {PROVENANCE_VERSION}")
    return Provenance(content_id, creator_id, manifest)


@dataclass(frozen=True, slots=True)
class ReceiptRef:
    """Which receipt records a delivery: the edge that signed it and its ``request_id``."""

    edge: str
    request_id: str

    def __post_init__(self) -> None:
        _check(self.edge, "receipt_ref.edge", _ID)
        _check(self.request_id, "receipt_ref.request_id", _REQUEST_ID)


def format_receipt_ref(ref: ReceiptRef) -> str:
    """The ``X-Receipt`` header value."""
    return f"edge={_quote(ref.edge)};request_id={_quote(ref.request_id)}"


def parse_receipt_ref(text: str) -> ReceiptRef:
    """Parse an ``X-Receipt`` value strictly."""
    edge, request_id = _params(text, "receipt_ref", ("edge", "request_id"))
    return ReceiptRef(edge, request_id)
