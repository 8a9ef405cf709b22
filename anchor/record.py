"""What an anchor is, on chain and off: the call that writes one and the event that records it.

Owns the anchor's byte formats — the ``anchor(bytes32,uint64,bytes32)`` call data the log
sends, and the ``Anchored`` event the contract emits — each with a strict decoder, the origin
hash, Ethereum addresses as text, and :class:`AnchorRecord`, an anchor found on a chain.
Pure: standard library and tlog only; no web3 (that is ``anchor/chain.py``), no IO.

The formats are the Solidity ABI's, fixed by ``anchor/solidity/MeterlogAnchor.sol``; the
selector and the event's topic are Keccak-256 hashes of the signatures, written here as
constants (the standard library has no Keccak) and checked against web3 by the tests.

>>> origin_hash("localhost/meterlog").hex()[:16]
'06bc85b43194a51f'
>>> call = encode_anchor_call(origin_hash("localhost/meterlog"), 5, bytes(32))
>>> len(call), call[:4].hex()
(100, '70c127c6')
>>> decode_anchor_call(call) == (origin_hash("localhost/meterlog"), 5, bytes(32))
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from tlog.errors import MalformedError
from tlog.evidence import Anchor as EvidenceAnchor
from tlog.hashing import HASH_SIZE
from tlog.parsing import encode_b64

__all__ = [
    "ANCHORED_TOPIC",
    "ANCHOR_SELECTOR",
    "AnchorRecord",
    "AnchoredEvent",
    "decode_anchor_call",
    "decode_anchored_event",
    "encode_anchor_call",
    "encode_anchored_event",
    "origin_hash",
    "parse_address",
    "parse_hash32",
]

ANCHOR_SELECTOR = bytes.fromhex("70c127c6")
"""The first 4 bytes of Keccak-256("anchor(bytes32,uint64,bytes32)")."""
ANCHORED_TOPIC = bytes.fromhex("969e3a440e8d07c3b6d58e32cc30d7f6360260b7c6a5ea49345e77217e2cb4c8")
"""Keccak-256("Anchored(bytes32,address,uint64,bytes32)"): the event's first topic."""

_WORD = 32
_MAX_UINT64 = 2**64 - 1


def origin_hash(origin: str) -> bytes:
    """SHA-256 of the log's origin line (UTF-8): what anchors are indexed by on chain."""
    return hashlib.sha256(origin.encode("utf-8")).digest()


def parse_address(text: str, field: str = "address") -> str:
    """An Ethereum address given as text: ``0x`` and 40 hex digits, in any case. Returns it
    in lowercase (the form compared everywhere; EIP-55 checksums need Keccak, so the mixed
    case is not checked here)."""
    if len(text) != 42 or not text.startswith("0x"):
        raise MalformedError(field, f"{text!r} is not 0x followed by 40 hex digits")
    try:
        bytes.fromhex(text[2:])
    except ValueError:
        raise MalformedError(field, f"{text!r} is not 0x followed by 40 hex digits") from None
    return text.lower()


def parse_hash32(text: str, field: str) -> bytes:
    """A 32-byte value written as ``0x`` and 64 hex digits (a transaction or block hash)."""
    if len(text) != 66 or not text.startswith("0x"):
        raise MalformedError(field, f"{text!r} is not 0x followed by 64 hex digits")
    try:
        return bytes.fromhex(text[2:])
    except ValueError:
        raise MalformedError(field, f"{text!r} is not 0x followed by 64 hex digits") from None


def _check_hash(value: bytes, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise MalformedError(field, f"not {HASH_SIZE} bytes")


def _check_size(tree_size: int) -> None:
    if isinstance(tree_size, bool) or not isinstance(tree_size, int):
        raise MalformedError("tree_size", f"{tree_size!r} is not an integer")
    if not 0 <= tree_size <= _MAX_UINT64:
        raise MalformedError("tree_size", f"{tree_size} is not a uint64")


def _uint_word(value: int) -> bytes:
    return value.to_bytes(_WORD, "big")


def _uint64_from_word(word: bytes, field: str) -> int:
    if word[:24] != bytes(24):
        raise MalformedError(field, "not a uint64: the high 24 bytes are not zero")
    return int.from_bytes(word, "big")


def encode_anchor_call(origin: bytes, tree_size: int, root_hash: bytes) -> bytes:
    """The call data of ``anchor(originHash, treeSize, rootHash)``: selector and 3 words."""
    _check_hash(origin, "origin_hash")
    _check_size(tree_size)
    _check_hash(root_hash, "root_hash")
    return ANCHOR_SELECTOR + origin + _uint_word(tree_size) + root_hash


def decode_anchor_call(data: bytes) -> tuple[bytes, int, bytes]:
    """(origin hash, tree size, root hash) from ``anchor`` call data; strict: exact length,
    the selector, a canonical uint64."""
    if len(data) != 4 + 3 * _WORD:
        raise MalformedError("call", f"{len(data)} bytes, not {4 + 3 * _WORD}")
    if data[:4] != ANCHOR_SELECTOR:
        raise MalformedError("call.selector", f"{data[:4].hex()} is not anchor()'s")
    words = [data[4 + i * _WORD : 4 + (i + 1) * _WORD] for i in range(3)]
    return words[0], _uint64_from_word(words[1], "call.tree_size"), words[2]


@dataclass(frozen=True, slots=True)
class AnchoredEvent:
    """The content of one ``Anchored`` event: who anchored what."""

    origin_hash: bytes
    sender: str
    """The caller of ``anchor`` (msg.sender), a lowercase 0x address."""
    tree_size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        _check_hash(self.origin_hash, "origin_hash")
        parse_address(self.sender, "sender")
        if self.sender != self.sender.lower():
            raise MalformedError("sender", "not in lowercase")
        _check_size(self.tree_size)
        _check_hash(self.root_hash, "root_hash")


def encode_anchored_event(event: AnchoredEvent) -> tuple[list[bytes], bytes]:
    """The log's topics and data, as the contract emits them (for tests and the docs)."""
    sender = bytes(12) + bytes.fromhex(event.sender[2:])
    return [ANCHORED_TOPIC, event.origin_hash, sender], _uint_word(
        event.tree_size
    ) + event.root_hash


def decode_anchored_event(topics: Sequence[bytes], data: bytes) -> AnchoredEvent:
    """An ``Anchored`` event from a log's topics and data; strict: three topics, the event's
    signature first, a 20-byte address, exactly two data words, a canonical uint64."""
    if len(topics) != 3:
        raise MalformedError("event.topics", f"{len(topics)} topics, not 3")
    if any(len(t) != _WORD for t in topics):
        raise MalformedError("event.topics", "a topic is not 32 bytes")
    if topics[0] != ANCHORED_TOPIC:
        raise MalformedError("event.topics", "not an Anchored event")
    if topics[2][:12] != bytes(12):
        raise MalformedError("event.sender", "not a 20-byte address")
    if len(data) != 2 * _WORD:
        raise MalformedError("event.data", f"{len(data)} bytes, not {2 * _WORD}")
    return AnchoredEvent(
        origin_hash=topics[1],
        sender="0x" + topics[2][12:].hex(),
        tree_size=_uint64_from_word(data[:_WORD], "event.tree_size"),
        root_hash=data[_WORD:],
    )


@dataclass(frozen=True, slots=True)
class AnchorRecord:
    """An anchor found on a chain: which event of which transaction, and what it anchored."""

    chain_id: int
    contract: str
    """The anchor contract's address, lowercase."""
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    event: AnchoredEvent

    def __post_init__(self) -> None:
        parse_address(self.contract, "contract")
        if self.contract != self.contract.lower():
            raise MalformedError("contract", "not in lowercase")
        for name in ("chain_id", "block_number", "log_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MalformedError(name, f"{value!r} is not a non-negative integer")
        _check_hash(self.tx_hash, "tx_hash")
        _check_hash(self.block_hash, "block_hash")

    @property
    def origin_hash(self) -> bytes:
        return self.event.origin_hash

    @property
    def sender(self) -> str:
        return self.event.sender

    @property
    def tree_size(self) -> int:
        return self.event.tree_size

    @property
    def root_hash(self) -> bytes:
        return self.event.root_hash

    def as_evidence(self) -> EvidenceAnchor:
        """The anchor as fork evidence states it (``tlog.evidence``; its origin is the
        checkpoint's beside it there)."""
        return EvidenceAnchor(
            chain_id=self.chain_id,
            contract=self.contract,
            block_number=self.block_number,
            block_hash=self.block_hash,
            tx_hash=self.tx_hash,
            log_index=self.log_index,
            sender=self.sender,
            tree_size=self.tree_size,
            root_hash=self.root_hash,
        )

    def to_json(self) -> dict[str, object]:
        """The record as JSON values: hashes of the chain in 0x-hex, tlog's in base64."""
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "tx_hash": "0x" + self.tx_hash.hex(),
            "block_number": self.block_number,
            "block_hash": "0x" + self.block_hash.hex(),
            "log_index": self.log_index,
            "sender": self.sender,
            "origin_hash": "0x" + self.origin_hash.hex(),
            "tree_size": self.tree_size,
            "root_hash": encode_b64(self.root_hash),
        }
