"""The anchoring job, step by step, against a real anvil node and the in-process eth-tester
chain, on real storage (SQLite and PostgreSQL).

Each test drives :class:`~log_server.anchoring.Anchoring` with an explicit clock and drives
the chain with its development RPC methods (mining, snapshots, automine off, base fee and
nonce changes) to make each thing the job must survive happen on purpose: an anchor that
waits for its confirmations, a reorg, an unreachable node, a nonce taken by another
transaction, a nonce gap, fees too low for the market, a broadcast lost before it reached
the node, a wrong chain, two server processes on one database, and a key that must never
reach a log line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anchor.chain import ChainUnavailableError, address_of, find_anchors
from anchor.secret import AnchorKey
from log_server.anchoring import Anchoring, AnchoringRefusedError
from log_server.config import Config
from log_server.sequencer import sequence
from log_server.storage import Storage, StoredAnchor
from tests.anchor.node import DeployedChain, deployed_chain, flaky_proxy
from tests.log_server.conftest import LOG, NOW_MS, ORIGIN, make_edge_key
from tlog.checkpoint import Checkpoint
from tlog.entry import EdgeKey
from tlog.note import SigningKey

CONFIRMATIONS = 3
INTERVAL_MS = 60_000
REPLACE_AFTER_MS = 30_000


@pytest.fixture(params=["anvil", "eth-tester"])
def chain(request: pytest.FixtureRequest) -> Iterator[DeployedChain]:
    with deployed_chain(request.param) as deployed:
        yield deployed


@pytest.fixture
def anvil_chain() -> Iterator[DeployedChain]:
    with deployed_chain("anvil") as deployed:
        yield deployed


def config_for(c: DeployedChain, tmp_path: Path, **changes: Any) -> Config:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "origin": ORIGIN,
        "anchor_rpc": c.endpoint,
        "anchor_chain_id": c.chain_id,
        "anchor_contract": c.contract,
        "anchor_key": c.key,
        "anchor_interval_s": INTERVAL_MS / 1000,
        "anchor_confirmations": CONFIRMATIONS,
        "anchor_poll_interval_s": 1.0,
        "anchor_replace_after_s": REPLACE_AFTER_MS / 1000,
    }
    values.update(changes)
    return Config(**values)


def job(c: DeployedChain, storage: Storage, tmp_path: Path, **changes: Any) -> Anchoring:
    """The job, started, sharing the test's chain object (the in-process chain exists once)."""
    anchoring = Anchoring(config_for(c, tmp_path, **changes), storage, ORIGIN)
    anchoring.chain = c.chain
    anchoring.start()
    return anchoring


_edge_keys = iter(range(1, 10**6))


def grow(storage: Storage, count: int = 1) -> int:
    """Log ``count`` more entries (edge-key registrations); the new tree size."""
    entries: list[EdgeKey] = []
    for _ in range(count):
        n = next(_edge_keys)
        entries.append(make_edge_key(SigningKey(f"edge-{n}", n.to_bytes(32, "big"))))
    sequence(storage, LOG, entries, NOW_MS)
    return storage.tree_size()


def pending_anchor(
    c: DeployedChain, storage: Storage, tmp_path: Path, **changes: Any
) -> tuple[Anchoring, StoredAnchor]:
    """On anvil with automine off (nothing is mined until the test says so): the job, and
    the anchor it sent of a tree grown by one entry, still pending."""
    anchoring = job(c, storage, tmp_path, **changes)
    c.chain.request("evm_setAutomine", [False])
    grow(storage)
    anchoring.anchor_due(NOW_MS)
    (anchor,) = anchors(storage)
    assert anchor.status == "pending"
    return anchoring, anchor


def anchors(storage: Storage) -> list[StoredAnchor]:
    return storage.anchors.list(limit=1000)


def settle(anchoring: Anchoring, c: DeployedChain, now_ms: int) -> StoredAnchor:
    """Mine and follow until the latest anchor is final (bounded); that anchor."""
    for _ in range(3 * CONFIRMATIONS):
        latest = anchoring.storage.anchors.latest()
        assert latest is not None
        if latest.status == "final":
            return latest
        assert latest.status in ("pending", "mined"), latest
        c.chain.mine(1)
        anchoring.follow(now_ms)
    raise AssertionError(f"not final: {anchoring.storage.anchors.latest()}")


# -- the happy path ----------------------------------------------------------------------------


def test_the_latest_checkpoint_is_anchored_when_the_tree_grew(
    chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    sequence(storage, LOG, [], NOW_MS)  # the empty tree's checkpoint: nothing to anchor
    anchoring = job(chain, storage, tmp_path)
    anchoring.anchor_due(NOW_MS)
    assert anchors(storage) == []

    size = grow(storage, 3)
    anchoring.follow(NOW_MS)  # the poll step never starts an anchor on its own
    assert anchors(storage) == []
    anchoring.anchor_due(NOW_MS)
    (sent,) = anchors(storage)
    assert sent.status in ("pending", "mined")
    assert (sent.tree_size, sent.sender) == (size, address_of(chain.key))
    assert sent.root_hash == storage.latest_checkpoint().root_hash  # type: ignore[union-attr]
    health = anchoring.status(size, NOW_MS)
    assert health["lag_entries"] == size and health["in_flight"] == "0x" + sent.tx_hash.hex()

    final = settle(anchoring, chain, NOW_MS + 1000)
    head = chain.chain.head()
    assert final.block_number is not None and head - final.block_number + 1 >= CONFIRMATIONS
    assert final.final_at_ms == NOW_MS + 1000 and final.gas_used is not None
    assert final.gas_used <= 30_000
    (on_chain,) = find_anchors(chain.chain, chain.contract, ORIGIN)
    assert (on_chain.tx_hash, on_chain.block_hash) == (final.tx_hash, final.block_hash)
    assert (on_chain.tree_size, on_chain.root_hash) == (size, final.root_hash)
    health = anchoring.status(size, NOW_MS + 3000)
    assert health["lag_entries"] == 0 and health["last_final_age_ms"] == 2000
    assert health["error"] is None

    anchoring.anchor_due(NOW_MS + INTERVAL_MS)  # the tree did not grow: nothing new
    assert len(anchors(storage)) == 1
    size = grow(storage, 2)
    anchoring.anchor_due(NOW_MS + INTERVAL_MS)
    assert [a.tree_size for a in anchors(storage)] == [size - 2, size]
    settle(anchoring, chain, NOW_MS + INTERVAL_MS)
    assert [r.tree_size for r in find_anchors(chain.chain, chain.contract, ORIGIN)] == [
        size - 2,
        size,
    ]


def test_one_anchor_at_a_time(chain: DeployedChain, storage: Storage, tmp_path: Path) -> None:
    anchoring = job(chain, storage, tmp_path)
    grow(storage)
    anchoring.anchor_due(NOW_MS)
    grow(storage)
    anchoring.anchor_due(NOW_MS + INTERVAL_MS)  # the first is not final yet
    assert len(anchors(storage)) == 1


# -- what goes wrong ----------------------------------------------------------------------------


def test_a_reorg_re_anchors(chain: DeployedChain, storage: Storage, tmp_path: Path) -> None:
    anchoring = job(chain, storage, tmp_path)
    size = grow(storage, 2)
    snapshot = chain.chain.request("evm_snapshot")
    anchoring.anchor_due(NOW_MS)  # both chains mine it at once (automine)
    anchoring.follow(NOW_MS)
    (mined,) = anchors(storage)
    assert mined.status == "mined" and mined.block_hash is not None

    # The block that held the anchor leaves the chain; the chain grows past its height.
    chain.chain.request("evm_revert", [snapshot])
    chain.chain.mine(4)
    assert chain.chain.block_hash(int(mined.block_number or 0)) != mined.block_hash
    assert find_anchors(chain.chain, chain.contract, ORIGIN) == []

    anchoring.follow(NOW_MS + 1000)
    (again,) = anchors(storage)
    assert again.reorgs == 1 and "reorg" in str(again.problem)
    final = settle(anchoring, chain, NOW_MS + 2000)
    assert final.block_hash != mined.block_hash and final.reorgs == 1
    (on_chain,) = find_anchors(chain.chain, chain.contract, ORIGIN)
    assert (on_chain.block_hash, on_chain.tree_size) == (final.block_hash, size)


def test_a_reorg_deeper_than_the_confirmations_re_anchors_a_final_anchor(
    chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    anchoring = job(chain, storage, tmp_path)
    grow(storage)
    snapshot = chain.chain.request("evm_snapshot")
    anchoring.anchor_due(NOW_MS)
    first = settle(anchoring, chain, NOW_MS)
    chain.chain.request("evm_revert", [snapshot])
    chain.chain.mine(CONFIRMATIONS + 2)
    anchoring.follow(NOW_MS + 1000)
    final = settle(anchoring, chain, NOW_MS + 2000)
    assert final.id == first.id and final.reorgs == 1 and final.block_hash != first.block_hash
    assert len(find_anchors(chain.chain, chain.contract, ORIGIN)) == 1


def test_an_unreachable_node_is_retried_and_the_log_goes_on(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    with flaky_proxy(anvil_chain.endpoint) as proxy:
        anchoring = job(anvil_chain, storage, tmp_path, anchor_rpc=proxy.url)
        anchoring.chain = None  # its own connection, through the proxy
        grow(storage)
        proxy.down()
        anchoring.anchor_due(NOW_MS)
        anchoring.follow(NOW_MS)
        assert anchors(storage) == []
        health = anchoring.status(storage.tree_size(), NOW_MS)
        assert "unreachable" in str(health["error"])
        assert health["lag_entries"] == storage.tree_size()
        size = grow(storage, 3)  # the log keeps logging
        assert storage.tree_size() == size

        proxy.up = True
        anchoring.follow(NOW_MS + 1000)  # back: the next poll anchors what it missed
        (sent,) = anchors(storage)
        assert sent.tree_size == size
        assert anchoring.status(size, NOW_MS + 1000)["error"] is None
        final = settle(anchoring, anvil_chain, NOW_MS + 2000)
        assert final.tree_size == size


def test_a_broadcast_lost_on_the_way_is_sent_again(
    chain: DeployedChain, storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchoring = job(chain, storage, tmp_path)
    grow(storage)

    def lost(signed: object) -> None:
        raise ChainUnavailableError("sending: the connection broke (injected)")

    monkeypatch.setattr(chain.chain, "broadcast", lost)
    anchoring.anchor_due(NOW_MS)
    (stored,) = anchors(storage)  # stored before it was sent, so it is not forgotten
    assert stored.status == "pending" and not chain.chain.knows(stored.tx_hash)
    monkeypatch.undo()
    anchoring.follow(NOW_MS + 1000)
    assert chain.chain.knows(stored.tx_hash)
    final = settle(anchoring, chain, NOW_MS + 2000)
    assert final.tx_hash == stored.tx_hash and final.tx_hashes == (stored.tx_hash,)


def test_a_nonce_taken_by_another_transaction_drops_the_anchor_and_sends_another(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    c = anvil_chain
    anchoring, ours = pending_anchor(c, storage, tmp_path)
    size = storage.tree_size()
    # Another process with the same key spends the nonce first, paying more.
    other = c.chain.sign_anchor(
        c.key,
        c.contract,
        dataclasses.replace(_checkpoint(storage), root_hash=b"\x07" * 32),
        nonce=ours.nonce,
        fees=c.chain.fees().bumped(300),
        gas_limit=ours.gas_limit,
    )
    c.chain.broadcast(other)
    c.chain.mine(1)
    assert c.chain.receipt(other.tx_hash, c.contract) is not None
    anchoring.follow(NOW_MS + 1000)
    dropped, resent = anchors(storage)
    assert dropped.status == "dropped" and f"nonce {ours.nonce}" in str(dropped.problem)
    assert resent.status == "pending" and resent.nonce == ours.nonce + 1
    assert resent.tree_size == size
    final = settle(anchoring, c, NOW_MS + 2000)
    assert final.id == resent.id


def test_an_anchor_not_mined_in_time_is_replaced_with_higher_fees(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    c = anvil_chain
    anchoring, first = pending_anchor(c, storage, tmp_path)
    anchoring.follow(NOW_MS + REPLACE_AFTER_MS - 1)  # not waited long enough yet
    assert anchors(storage) == [first]

    anchoring.follow(NOW_MS + REPLACE_AFTER_MS)
    (replaced,) = anchors(storage)
    assert replaced.nonce == first.nonce
    assert replaced.tx_hashes == (first.tx_hash, replaced.tx_hash)
    assert _fees(replaced)["max_fee_per_gas"] >= _fees(first)["max_fee_per_gas"] * 6 // 5
    assert "not mined in time" in str(replaced.problem)
    c.chain.mine(1)
    assert c.chain.receipt(first.tx_hash, c.contract) is None  # the node took the replacement
    final = settle(anchoring, c, NOW_MS + REPLACE_AFTER_MS + 1)
    assert final.tx_hash == replaced.tx_hash


def test_a_base_fee_above_the_anchors_fees_gets_it_re_signed(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    c = anvil_chain
    anchoring, first = pending_anchor(c, storage, tmp_path)
    offered = _fees(first)["max_fee_per_gas"]
    # The base fee jumps above what the anchor offers: anvil evicts it, and refuses it again.
    c.chain.request("anvil_setNextBlockBaseFeePerGas", [hex(offered * 3)])
    c.chain.mine(1)
    assert c.chain.receipt(first.tx_hash, c.contract) is None
    anchoring.follow(NOW_MS + 1)
    (resigned,) = anchors(storage)
    assert resigned.nonce == first.nonce and len(resigned.tx_hashes) == 2
    assert _fees(resigned)["max_fee_per_gas"] > offered * 3
    assert "refused again" in str(resigned.problem)
    final = settle(anchoring, c, NOW_MS + 2)
    assert final.tx_hash == resigned.tx_hash


def test_fees_stop_at_the_cap(anvil_chain: DeployedChain, storage: Storage, tmp_path: Path) -> None:
    c = anvil_chain
    anchoring, sent = pending_anchor(c, storage, tmp_path, anchor_max_fee_gwei=1)
    size = storage.tree_size()
    assert _fees(sent)["max_fee_per_gas"] == 10**9  # the market asks more; 1 gwei is the cap
    anchoring.follow(NOW_MS + REPLACE_AFTER_MS)
    (waiting,) = anchors(storage)
    assert waiting.tx_hashes == sent.tx_hashes and "at the cap" in str(waiting.problem)

    # The base fee rises above the cap: the node evicts the anchor and refuses it again;
    # the job will not pay more, and says so.
    c.chain.request("anvil_setNextBlockBaseFeePerGas", [hex(5 * 10**9)])
    c.chain.mine(1)
    anchoring.follow(NOW_MS + REPLACE_AFTER_MS + 1)
    (refused,) = anchors(storage)
    assert refused.tx_hashes == sent.tx_hashes  # nothing new was signed: it would not pay
    assert "base fee" in str(refused.problem) and "at the cap" in str(refused.problem)
    health = anchoring.status(size, NOW_MS)
    assert "at the cap" in str(health["error"]) and health["lag_entries"] == size


def test_a_nonce_gap_is_filled(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    c = anvil_chain
    anchoring, first = pending_anchor(c, storage, tmp_path)
    # The account's nonce falls below the anchor's (a transaction before it was lost):
    # the anchor waits behind a gap that nothing will fill.
    c.chain.request("anvil_setNonce", [address_of(c.key), hex(first.nonce - 1)])
    c.chain.mine(1)
    assert c.chain.receipt(first.tx_hash, c.contract) is None
    anchoring.follow(NOW_MS + REPLACE_AFTER_MS)
    (moved,) = anchors(storage)
    assert moved.nonce == first.nonce - 1 and "nonce gap" in str(moved.problem)
    final = settle(anchoring, c, NOW_MS + REPLACE_AFTER_MS)
    assert final.nonce == first.nonce - 1


def test_a_refused_anchor_is_retried_at_the_next_interval_only(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    poor = AnchorKey.parse("0x" + "3d" * 32, "a key without funds")
    anchoring = job(anvil_chain, storage, tmp_path, anchor_key=poor)
    size = grow(storage)
    anchoring.anchor_due(NOW_MS)
    (failed,) = anchors(storage)
    assert failed.status == "failed" and "refused" in str(failed.problem)
    assert "funds" in str(anchoring.status(size, NOW_MS)["error"]).lower()
    anchoring.follow(NOW_MS + 1000)
    anchoring.follow(NOW_MS + 2000)
    assert len(anchors(storage)) == 1  # not at every poll: that would burn through the log
    anchoring.anchor_due(NOW_MS + INTERVAL_MS)
    assert [a.status for a in anchors(storage)] == ["failed", "failed"]


# -- refusals, leases, secrets -------------------------------------------------------------------


def test_a_wrong_chain_id_is_refused_at_start(
    chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    config = config_for(chain, tmp_path, anchor_chain_id=chain.chain_id + 1)
    anchoring = Anchoring(config, storage, ORIGIN)
    anchoring.chain = chain.chain
    with pytest.raises(AnchoringRefusedError, match=f"serves chain {chain.chain_id}, not"):
        anchoring.start()
    grow(storage)
    anchoring.anchor_due(NOW_MS)  # refused for good: it never sends
    assert anchors(storage) == []
    assert "not the configured chain" in str(anchoring.status(1, NOW_MS)["error"])


def test_a_wrong_contract_is_refused_at_start(
    anvil_chain: DeployedChain, storage: Storage, tmp_path: Path
) -> None:
    config = config_for(anvil_chain, tmp_path, anchor_contract=address_of(anvil_chain.key))
    with pytest.raises(AnchoringRefusedError, match="not the meterlog anchor contract"):
        Anchoring(config, storage, ORIGIN).start()


def test_one_process_anchors_at_a_time(
    chain: DeployedChain, storage_url: str, tmp_path: Path
) -> None:
    first, second = Storage.open(storage_url), Storage.open(storage_url)
    try:
        a = job(chain, first, tmp_path)
        b = job(chain, second, tmp_path)
        grow(first)
        a.anchor_due(NOW_MS)
        b.anchor_due(NOW_MS)  # the lease is a's
        b.follow(NOW_MS)
        assert len(anchors(first)) == 1
        a.close()  # a stops: its lease goes with it
        settle(b, chain, NOW_MS + 1000)
        assert len(anchors(second)) == 1
    finally:
        first.close()
        second.close()


def test_the_key_never_reaches_a_log_line(
    anvil_chain: DeployedChain,
    storage: Storage,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    poor = AnchorKey.parse("0x" + "3c" * 32, "a key without funds")
    caplog.set_level(logging.DEBUG)
    with flaky_proxy(anvil_chain.endpoint) as proxy:
        anchoring = job(anvil_chain, storage, tmp_path, anchor_rpc=proxy.url, anchor_key=poor)
        anchoring.chain = None
        grow(storage)
        anchoring.anchor_due(NOW_MS)  # refused: no funds
        error = anchoring.status(1, NOW_MS)["error"]
        assert "insufficient funds" in str(error).lower() or "afford" in str(error).lower()
        proxy.down()
        anchoring.anchor_due(NOW_MS + 1)  # unreachable
        assert "unreachable" in str(anchoring.status(1, NOW_MS)["error"])
    assert caplog.records  # web3's debug lines and the job's warnings were captured
    for text in (caplog.text, repr(anchoring.__dict__), repr(anchoring.status(1, NOW_MS))):
        assert "3c" * 32 not in text.lower()


def _checkpoint(storage: Storage) -> Checkpoint:
    latest = storage.latest_checkpoint()
    assert latest is not None
    return Checkpoint(ORIGIN, latest.tree_size, latest.root_hash)


def _fees(anchor: StoredAnchor) -> dict[str, int]:
    value: dict[str, int] = json.loads(anchor.fees_json)
    return value
