"""Tests for tlog.hashing: RFC 6962 leaf and node hashes, the empty root, domain separation.

Covers the published transparency-dev rfc6962 hasher vectors, Go sumdb's RecordHash vector,
and that the 0x00/0x01 prefixes keep a leaf from ever hashing like an interior node.
"""

from __future__ import annotations

import base64
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests import reference
from tlog.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash


def test_rfc6962_hasher_vectors(vectors: dict[str, Any]) -> None:
    v = vectors["rfc6962_hasher"]["vectors"]
    assert EMPTY_ROOT.hex() == v["empty_tree_root"]
    assert leaf_hash(b"").hex() == v["leaf_hash_of_empty_input"]
    assert leaf_hash(b"L123456").hex() == v["leaf_hash_of_ascii_L123456"]
    # The published node vector hashes two raw ASCII strings, not 32-byte hashes: it pins the
    # byte layout 0x01 || left || right only.
    assert node_hash(b"N123", b"N456").hex() == v["node_hash_of_ascii_N123_N456"]


def test_go_tlog_record_hash_vector(vectors: dict[str, Any]) -> None:
    v = vectors["go_tlog_record_hash"]
    assert base64.b64encode(leaf_hash(v["record"].encode())).decode() == v["record_hash_b64"]


def test_ct_8_leaf_tree_leaf_hashes(vectors: dict[str, Any]) -> None:
    v = vectors["ct_8_leaf_tree"]
    got = [leaf_hash(bytes.fromhex(e)).hex() for e in v["leaf_inputs_hex"]]
    assert got == v["leaf_hashes_hex"]


def test_ct_8_leaf_tree_interior_nodes(vectors: dict[str, Any]) -> None:
    # Every published interior node is node_hash of its two published children.
    levels = [
        [bytes.fromhex(h) for h in level]
        for level in vectors["ct_8_leaf_tree"]["node_hashes_by_level_hex"]
    ]
    assert len(levels) == 4
    for below, above in pairwise(levels):
        assert len(above) == len(below) // 2
        for i, parent in enumerate(above):
            assert node_hash(below[2 * i], below[2 * i + 1]) == parent


def test_hashes_are_32_bytes() -> None:
    assert HASH_SIZE == 32
    assert len(EMPTY_ROOT) == HASH_SIZE
    assert len(leaf_hash(b"x" * 1000)) == HASH_SIZE
    assert len(node_hash(EMPTY_ROOT, EMPTY_ROOT)) == HASH_SIZE


def test_leaf_and_node_hashes_of_the_same_bytes_differ() -> None:
    # A 64-byte entry made of two hashes must not hash like the node over those hashes,
    # otherwise an interior node could be passed off as a leaf (second-preimage attack).
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(left + right) != node_hash(left, right)
    # And the other way round: no prefix at all is neither.
    assert leaf_hash(b"") != EMPTY_ROOT


def test_node_hash_is_ordered() -> None:
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) != node_hash(right, left)


@given(st.binary(min_size=64, max_size=64))
def test_no_64_byte_entry_hashes_like_a_node(entry: bytes) -> None:
    assert leaf_hash(entry) != node_hash(entry[:32], entry[32:])


@given(st.binary(max_size=200))
def test_leaf_hash_agrees_with_the_reference(entry: bytes) -> None:
    assert leaf_hash(entry) == reference.leaf_hash(entry)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_node_hash_agrees_with_the_reference(left: bytes, right: bytes) -> None:
    assert node_hash(left, right) == reference.node_hash(left, right)
