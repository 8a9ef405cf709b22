"""The anchoring key: the private key of the Ethereum account that pays for and signs anchors.

Owns reading it (from a file or from an environment variable's value) and keeping it out of
sight: :class:`AnchorKey` never shows the key in ``repr``, ``str``, an error message or a
traceback's locals display, and the errors raised while reading it name where it came from,
never what it holds. Pure: standard library only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AnchorKey", "AnchorKeyError"]

_HEX = frozenset("0123456789abcdefABCDEF")
_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
"""secp256k1's group order: a private key is an integer in 1 .. order-1."""


class AnchorKeyError(ValueError):
    """The anchoring key cannot be read or is not a key; says where from, never the key."""


@dataclass(frozen=True, slots=True)
class AnchorKey:
    """A secp256k1 private key, 32 bytes, with the name of where it came from."""

    secret: bytes = field(repr=False)
    source: str = field(default="the anchoring key", compare=False)
    """Where it came from (a file name, an environment variable's name), for messages."""

    def __post_init__(self) -> None:
        if len(self.secret) != 32 or not 0 < int.from_bytes(self.secret, "big") < _CURVE_ORDER:
            raise AnchorKeyError(f"{self.source}: not a secp256k1 private key")

    def __repr__(self) -> str:
        return f"AnchorKey(source={self.source!r}, secret=<hidden>)"

    __str__ = __repr__

    @classmethod
    def parse(cls, text: str, source: str) -> AnchorKey:
        """A key written as 64 hex digits, with or without ``0x``, surrounded by whitespace
        at most. The message on error names ``source`` only."""
        value = text.strip()
        if value[:2] in ("0x", "0X"):
            value = value[2:]
        if len(value) != 64 or not set(value) <= _HEX:
            raise AnchorKeyError(
                f"{source}: not a private key (64 hex digits, optionally after 0x)"
            )
        return cls(bytes.fromhex(value), source)

    @classmethod
    def from_file(cls, path: Path) -> AnchorKey:
        """Read the key from ``path``; refuses a file that others may read or write."""
        source = f"anchor key file {path}"
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
            raise AnchorKeyError(f"{source}: {reason or type(exc).__name__}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AnchorKeyError(
                f"{source}: readable or writable by others (mode {stat.S_IMODE(mode):o}); "
                "chmod 600 it"
            )
        return cls.parse(text, source)

    @classmethod
    def from_env(cls, name: str, value: str) -> AnchorKey:
        """The key held by the environment variable ``name`` (its ``value``)."""
        return cls.parse(value, f"environment variable {name}")

    def hex(self) -> str:
        """The key as 0x and 64 hex digits: for signing libraries only, never for output."""
        return "0x" + self.secret.hex()
