"""anchor.record, anchor.artifact and anchor.secret: the pure side of anchoring.

The call and event codecs against each other and against web3's ABI encoder (the
reference), strict decoding (every byte of the selector, the padding and the topics
matters), the constants against Keccak-256 of the committed ABI's signatures, and the
anchoring key, which must never show itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from anchor.artifact import contract_abi, creation_code, runtime_code
from anchor.record import (
    ANCHOR_SELECTOR,
    ANCHORED_TOPIC,
    AnchoredEvent,
    AnchorRecord,
    decode_anchor_call,
    decode_anchored_event,
    encode_anchor_call,
    encode_anchored_event,
    origin_hash,
    parse_address,
    parse_hash32,
)
from anchor.secret import AnchorKey, AnchorKeyError
from tlog.errors import MalformedError

SECRET_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
hashes = st.binary(min_size=32, max_size=32)
sizes = st.integers(min_value=0, max_value=2**64 - 1)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())


def _signature(item: dict[str, object]) -> bytes:
    inputs = item["inputs"]
    assert isinstance(inputs, list)
    return f"{item['name']}({','.join(i['type'] for i in inputs)})".encode()


def test_selector_and_topic_are_keccak_of_the_committed_abi() -> None:
    (function,) = [i for i in contract_abi() if i["type"] == "function"]
    (event,) = [i for i in contract_abi() if i["type"] == "event"]
    assert _signature(function) == b"anchor(bytes32,uint64,bytes32)"
    assert keccak(_signature(function))[:4] == ANCHOR_SELECTOR
    assert _signature(event) == b"Anchored(bytes32,address,uint64,bytes32)"
    assert keccak(_signature(event)) == ANCHORED_TOPIC
    assert [i["indexed"] for i in event["inputs"]] == [True, True, False, False]


def test_the_committed_bytecode_deploys_the_committed_runtime_code() -> None:
    # The creation code copies the runtime code out of itself, metadata and all.
    assert runtime_code() in creation_code()
    assert ANCHOR_SELECTOR in runtime_code()
    assert ANCHORED_TOPIC in runtime_code()


def test_origin_hash_is_sha256_of_the_origin_line() -> None:
    assert origin_hash("localhost/meterlog").hex() == (
        "06bc85b43194a51f0571d9f6d6acfb938355ac3bf02c883e583652fa5760562f"
    )
    assert origin_hash("é") != origin_hash("e")


@given(hashes, sizes, hashes)
def test_the_call_round_trips_and_is_the_abi_encoding(
    origin: bytes, tree_size: int, root: bytes
) -> None:
    call = encode_anchor_call(origin, tree_size, root)
    assert call == ANCHOR_SELECTOR + abi_encode(
        ["bytes32", "uint64", "bytes32"], [origin, tree_size, root]
    )
    assert decode_anchor_call(call) == (origin, tree_size, root)


@given(hashes, addresses, sizes, hashes)
def test_the_event_round_trips(origin: bytes, sender: str, tree_size: int, root: bytes) -> None:
    event = AnchoredEvent(origin, sender, tree_size, root)
    topics, data = encode_anchored_event(event)
    assert data == abi_encode(["uint64", "bytes32"], [tree_size, root])
    assert decode_anchored_event(topics, data) == event


def test_every_malformed_call_is_refused() -> None:
    call = encode_anchor_call(bytes(32), 7, b"\x11" * 32)
    for bad in (
        call[:-1],
        call + b"\0",
        b"\xff" + call[1:],
        call[:4] + call[4:40] + b"\x01" + call[41:],
    ):
        with pytest.raises(MalformedError):
            decode_anchor_call(bad)
    with pytest.raises(MalformedError, match="tree_size"):
        encode_anchor_call(bytes(32), 2**64, bytes(32))
    with pytest.raises(MalformedError, match="tree_size"):
        encode_anchor_call(bytes(32), -1, bytes(32))
    with pytest.raises(MalformedError, match="root_hash"):
        encode_anchor_call(bytes(32), 1, bytes(31))


def test_every_malformed_event_is_refused() -> None:
    event = AnchoredEvent(b"\x01" * 32, "0x" + "ab" * 20, 9, b"\x02" * 32)
    topics, data = encode_anchored_event(event)
    wrong_topic = [keccak(b"Anchored(bytes32,address,uint256,bytes32)"), *topics[1:]]
    dirty_sender = [*topics[:2], b"\x01" + topics[2][1:]]
    short_topic = [*topics[:2], topics[2][1:]]
    for bad_topics in (topics[:2], [*topics, bytes(32)], wrong_topic, dirty_sender, short_topic):
        with pytest.raises(MalformedError):
            decode_anchored_event(bad_topics, data)
    big_size = b"\x01" + data[1:]  # a uint64 with its high bytes set
    for bad_data in (data[:-1], data + bytes(32), big_size):
        with pytest.raises(MalformedError):
            decode_anchored_event(topics, bad_data)


def test_a_record_refuses_what_is_not_a_record() -> None:
    event = AnchoredEvent(bytes(32), "0x" + "ab" * 20, 1, bytes(32))
    good = {
        "chain_id": 1,
        "contract": "0x" + "cd" * 20,
        "tx_hash": bytes(32),
        "block_number": 5,
        "block_hash": bytes(32),
        "log_index": 0,
        "event": event,
    }
    record = AnchorRecord(**good)  # type: ignore[arg-type]
    assert record.to_json()["root_hash"] == "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    for name, value in (
        ("contract", "0x" + "CD" * 20),
        ("tx_hash", bytes(31)),
        ("block_number", -1),
        ("chain_id", True),
    ):
        with pytest.raises(MalformedError, match=name):
            AnchorRecord(**{**good, name: value})  # type: ignore[arg-type]
    with pytest.raises(MalformedError, match="sender"):
        AnchoredEvent(bytes(32), "0x" + "AB" * 20, 1, bytes(32))


def test_addresses_and_hashes_as_text() -> None:
    assert parse_address("0x" + "Ab" * 20) == "0x" + "ab" * 20
    for bad in ("0x" + "ab" * 19, "ab" * 21, "0x" + "zz" * 20, "0x" + "ab" * 21):
        with pytest.raises(MalformedError, match="contract"):
            parse_address(bad, "contract")
    assert parse_hash32("0x" + "01" * 32, "tx") == b"\x01" * 32
    with pytest.raises(MalformedError, match="tx"):
        parse_hash32("0x" + "01" * 31, "tx")


# -- the key ----------------------------------------------------------------------------------


def test_the_key_never_shows_itself() -> None:
    key = AnchorKey.parse("0x" + SECRET_HEX, "test")
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"k": key})):
        assert SECRET_HEX not in text.lower()
        assert "hidden" in text
    assert key.hex() == "0x" + SECRET_HEX


@pytest.mark.parametrize(
    "text",
    [
        SECRET_HEX[:-1],  # 63 digits
        SECRET_HEX + "0",
        SECRET_HEX[:-1] + "g",
        "0x" + "00" * 32,  # zero is no key
        "0x" + "ff" * 32,  # above the curve order
        SECRET_HEX + " " + SECRET_HEX,
    ],
)
def test_a_bad_key_is_refused_without_being_shown(text: str) -> None:
    with pytest.raises(AnchorKeyError) as caught:
        AnchorKey.parse(text, "environment variable METERLOG_ANCHOR_KEY")
    message = str(caught.value)
    assert "METERLOG_ANCHOR_KEY" in message
    assert SECRET_HEX[:16] not in message and "ff" * 8 not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_key_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "anchor.key"
    path.write_text(f"0x{SECRET_HEX}\n", encoding="ascii")
    os.chmod(path, 0o644)
    with pytest.raises(AnchorKeyError, match="chmod 600") as caught:
        AnchorKey.from_file(path)
    assert SECRET_HEX not in str(caught.value)
    os.chmod(path, 0o600)
    assert AnchorKey.from_file(path).secret.hex() == SECRET_HEX
    with pytest.raises(AnchorKeyError, match="No such file"):
        AnchorKey.from_file(tmp_path / "missing.key")


def test_the_artifacts_are_what_the_build_script_names() -> None:
    names = json.loads(json.dumps([i.get("name") for i in contract_abi()]))
    assert sorted(names) == ["Anchored", "anchor"]
