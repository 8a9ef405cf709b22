"""RFC 6962 hashing: the only place where the 0x00 (leaf) and 0x01 (node) prefixes exist.

Owns leaf_hash, node_hash and the empty-tree root. Imports only hashlib.

>>> leaf_hash(b"").hex()[:16]
'6e340b9cffb37a98'
>>> EMPTY_ROOT.hex()[:16]
'e3b0c44298fc1c14'
"""

from __future__ import annotations

from hashlib import sha256

HASH_SIZE = 32
"""Every hash in the tree is a 32-byte SHA-256 digest."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = sha256(b"").digest()
"""MTH({}): the root hash of the tree of size 0."""


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry): the leaf hash of one entry."""
    return sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return sha256(_NODE_PREFIX + left + right).digest()
