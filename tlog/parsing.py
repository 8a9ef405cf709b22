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

import binascii

from tlog.errors import MalformedError

__all__ = [
    "MAX_INT63",
    "check_hashes",
    "decode_b64",
    "encode_b64",
    "parse_decimal",
    "parse_hash_lines",
    "split_head",
]

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
        # strict_mode: only the alphabet, padding exactly where it belongs, nothing after it
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII string
        raise MalformedError(field, "not valid base64") from exc
    if encode_b64(data) != text:
        raise MalformedError(field, "base64 is not canonical")
    return data


def encode_b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def split_head(data: bytes, field: str) -> tuple[list[str], bytes]:
    """The ASCII lines before the first blank line, and the bytes after it: the layout of
    every text format that puts a few lines (a header, proof hashes) before a signed note."""
    head, sep, rest = data.partition(b"\n\n")
    if not sep:
        raise MalformedError(field, "no blank line before the signed part")
    try:
        return head.decode("ascii").split("\n"), rest
    except UnicodeDecodeError as exc:
        raise MalformedError(field, "the lines before the blank line are not ASCII") from exc


def parse_hash_lines(lines: list[str], field: str, maximum: int) -> tuple[bytes, ...]:
    """At most ``maximum`` lines, each the canonical base64 of a 32-byte hash."""
    if len(lines) > maximum:
        raise MalformedError(field, f"more than {maximum} hashes")
    hashes = tuple(decode_b64(line, f"{field}[{i}]") for i, line in enumerate(lines))
    check_hashes(hashes, field, maximum)
    return hashes


def check_hashes(hashes: tuple[bytes, ...], field: str, maximum: int) -> None:
    """At most ``maximum`` hashes, each 32 bytes."""
    if len(hashes) > maximum:
        raise MalformedError(field, f"more than {maximum} hashes")
    for h in hashes:
        if len(h) != 32:
            raise MalformedError(field, "a hash is not 32 bytes")
