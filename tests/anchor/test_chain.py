"""anchor.chain against a real anvil node and against the in-process eth-tester chain.

Deploying the committed bytecode, anchoring and finding anchors back, the contract-code and
chain-ID checks, the gas an anchor costs, an unreachable node, a node that caps
``eth_getLogs`` ranges (fault injection), and errors that never hold the key.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from typing import Any

import pytest
from web3.exceptions import Web3RPCError

from anchor.chain import (
    Chain,
    ChainRefusedError,
    ChainUnavailableError,
    NotAnchorContractError,
    WrongChainError,
    address_of,
    anchor_checkpoint,
    find_anchors,
)
from anchor.record import origin_hash
from anchor.secret import AnchorKey
from tests.anchor.node import DeployedChain, flaky_proxy, running_anvil
from tlog.checkpoint import Checkpoint

ORIGIN = "log.example/anchor-test"
MAX_GAS_PER_ANCHOR = 30_000


def checkpoint(tree_size: int, origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin, tree_size, hashlib.sha256(f"root {tree_size}".encode()).digest())


def test_an_anchor_is_found_again_from_the_events(anchor_chain: DeployedChain) -> None:
    c = anchor_chain
    first = anchor_checkpoint(c.chain, c.key, c.contract, checkpoint(3))
    second = anchor_checkpoint(c.chain, c.key, c.contract, checkpoint(8))
    anchor_checkpoint(c.chain, c.key, c.contract, checkpoint(8, "another.example/log"))
    by_other = anchor_checkpoint(c.chain, c.other_key, c.contract, checkpoint(9))

    found = find_anchors(c.chain, c.contract, ORIGIN)
    assert found == [first, second, by_other]
    assert [r.sender for r in found] == [address_of(c.key)] * 2 + [address_of(c.other_key)]
    assert (first.tree_size, first.root_hash) == (3, checkpoint(3).root_hash)
    assert first.origin_hash == origin_hash(ORIGIN)
    assert first.chain_id == c.chain_id and first.contract == c.contract
    assert first.block_hash == c.chain.block_hash(first.block_number)
    assert find_anchors(c.chain, c.contract, ORIGIN, from_block=second.block_number) == [
        second,
        by_other,
    ]
    assert find_anchors(c.chain, c.contract, "nobody.example/log") == []


def test_an_anchor_costs_at_most_30000_gas(anchor_chain: DeployedChain) -> None:
    c = anchor_chain
    record = anchor_checkpoint(c.chain, c.key, c.contract, checkpoint(2**40 + 7))
    mined = c.chain.receipt(record.tx_hash, c.contract)
    assert mined is not None and mined.succeeded
    assert mined.gas_used <= MAX_GAS_PER_ANCHOR
    assert mined.records == (record,)


def test_the_contract_code_is_checked(anchor_chain: DeployedChain) -> None:
    c = anchor_chain
    c.chain.check_contract(c.contract)
    with pytest.raises(NotAnchorContractError, match="holds no code"):
        c.chain.check_contract(address_of(c.key))  # an account, not a contract


def test_a_wrong_chain_id_is_refused(anchor_chain: DeployedChain) -> None:
    with pytest.raises(WrongChainError, match=f"serves chain {anchor_chain.chain_id}, not"):
        Chain.connect(anchor_chain.endpoint, expected_chain_id=anchor_chain.chain_id + 1)


def test_an_unreachable_node_is_an_unavailable_error() -> None:
    with running_anvil() as anvil, flaky_proxy(anvil.url) as proxy:
        chain = Chain.connect(proxy.url, timeout_s=2.0)
        proxy.down()
        with pytest.raises(ChainUnavailableError, match=r"127\.0\.0\.1.*unreachable"):
            chain.head()
        proxy.up = True
        assert chain.head() >= 0


def test_a_url_with_a_secret_path_is_not_shown() -> None:
    with pytest.raises(ChainUnavailableError) as caught:
        Chain.connect("http://127.0.0.1:9/v3/secret-api-key", timeout_s=1.0)
    assert "secret-api-key" not in str(caught.value)
    assert "http://127.0.0.1:9" in str(caught.value)


def test_capped_log_ranges_are_split(
    anchor_chain: DeployedChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = anchor_chain
    records = [anchor_checkpoint(c.chain, c.key, c.contract, checkpoint(n)) for n in (1, 2, 3)]
    c.chain.mine(20)
    real = c.chain.w3.eth.get_logs
    answered: list[tuple[int, int]] = []

    def capped(query: Any) -> Any:  # a node that serves at most 4 blocks per query
        if query["toBlock"] - query["fromBlock"] >= 4:
            raise Web3RPCError("query exceeds max block range 4")
        answered.append((query["fromBlock"], query["toBlock"]))
        return real(query)

    monkeypatch.setattr(c.chain.w3.eth, "get_logs", capped)
    head = c.chain.head()
    assert find_anchors(c.chain, c.contract, ORIGIN) == records
    # The answered ranges cover 0..head exactly, in order, without overlap.
    assert answered[0][0] == 0 and answered[-1][1] == head
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(answered))


def test_errors_never_hold_the_key(anchor_chain: DeployedChain) -> None:
    c = anchor_chain
    broke = AnchorKey.parse("0x" + "5e" * 32, "a key without funds")
    with pytest.raises(ChainRefusedError) as caught:
        anchor_checkpoint(c.chain, broke, c.contract, checkpoint(1))
    text = f"{caught.value!s} {caught.value!r}"
    assert "5e" * 32 not in text.lower()
    assert caught.value.__cause__ is None


def test_loading_web3_leaves_the_recursion_limit_alone() -> None:
    # py_ecc and py-evm raise it to 100,000 on import; left so, a deeply nested JSON body
    # would overflow the C stack of the log server (a crash) instead of raising.
    script = (
        "import sys; before = sys.getrecursionlimit()\n"
        "from anchor.chain import IN_PROCESS, Chain\n"
        "Chain.connect(IN_PROCESS)\n"
        "import web3, eth_account, eth_tester\n"
        "print(before, sys.getrecursionlimit())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    before, after = done.stdout.split()
    assert before == after == "1000"
