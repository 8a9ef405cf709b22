"""docs/formats.md's anchor example is a test vector: every ``anchor-example`` block is
rebuilt here from the ``inputs`` block, with anchor.record, and checked against web3's ABI
encoder too."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eth_abi import encode as abi_encode

from anchor.record import (
    ANCHOR_SELECTOR,
    AnchoredEvent,
    decode_anchor_call,
    decode_anchored_event,
    encode_anchor_call,
    encode_anchored_event,
    origin_hash,
)
from tlog.parsing import decode_b64

DOC = Path(__file__).parents[2] / "docs" / "formats.md"
_BLOCK = re.compile(r"<!-- anchor-example: (?P<name>[\w-]+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)


def test_the_anchor_example_is_what_anchor_record_builds() -> None:
    blocks = {m["name"]: m["body"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(blocks) == {"inputs", "origin-hash", "call", "event-topics", "event-data"}
    inputs = json.loads(blocks["inputs"])
    origin = origin_hash(inputs["origin"])
    root = decode_b64(inputs["root_hash"], "root_hash")
    call = encode_anchor_call(origin, inputs["tree_size"], root)
    event = AnchoredEvent(origin, inputs["sender"], inputs["tree_size"], root)
    topics, data = encode_anchored_event(event)

    assert blocks["origin-hash"] == origin.hex() + "\n"
    assert blocks["call"].split() == [call[:4].hex()] + [
        call[i : i + 32].hex() for i in range(4, len(call), 32)
    ]
    assert blocks["event-topics"].split() == [t.hex() for t in topics]
    assert blocks["event-data"].split() == [data[:32].hex(), data[32:].hex()]

    written = bytes.fromhex("".join(blocks["call"].split()))
    assert written == ANCHOR_SELECTOR + abi_encode(
        ["bytes32", "uint64", "bytes32"], [origin, inputs["tree_size"], root]
    )
    assert decode_anchor_call(written) == (origin, inputs["tree_size"], root)
    written_topics = [bytes.fromhex(t) for t in blocks["event-topics"].split()]
    written_data = bytes.fromhex("".join(blocks["event-data"].split()))
    assert decode_anchored_event(written_topics, written_data) == event
