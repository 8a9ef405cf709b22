"""Strict parsers for the scalar fields that the text formats share: decimals and base64.

Owns the two rules every tlog format applies to its numbers and binary fields: decimals are
canonical (ASCII digits, no sign, no leading zeros, round-trip through int) and range
checked; base64 is standard, padded and validated (RFC 4648 section 4). Imports tlog.errors.

>>> parse_decimal("42", "size")
42
>>> parse_decimal("042", "size")
Traceback (most recent call last):
...
tlog.errors.MalformedError: size: '042' is not a canonical decimal
"""

from __future__ import annotations

import base64
import binascii

from tlog.errors import MalformedError

__all__ = ["MAX_INT63", "decode_b64", "encode_b64", "parse_decimal"]

MAX_INT63 = (1 << 63) - 1
"""The largest size or index meterlog accepts: it must fit a signed 64-bit database integer."""


def parse_decimal(text: str, field: str, maximum: int = MAX_INT63) -> int:
    """A canonical ASCII decimal in ``0..maximum``; MalformedError naming ``field`` otherwise."""
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        raise MalformedError(field, f"{text!r} is not a canonical decimal")
    # More digits than the maximum is too large; it must not reach int(), which refuses
    # strings of over 4300 digits with a plain ValueError, not a MalformedError.
    if len(text) > len(str(maximum)):
        raise MalformedError(field, f"a {len(text)}-digit number is larger than {maximum}")
    value = int(text)
    if value > maximum:
        raise MalformedError(field, f"{value} is larger than {maximum}")
    return value


def decode_b64(text: str, field: str) -> bytes:
    """Standard padded base64, validated: no stray characters, no missing padding."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedError(field, "not valid base64") from exc
    if base64.b64encode(data).decode() != text:
        raise MalformedError(field, "base64 is not canonical")
    return data


def encode_b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")
