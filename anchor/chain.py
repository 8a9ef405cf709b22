"""An Ethereum chain, as anchoring needs it: the one module of meterlog that imports web3.

Owns talking to a node over JSON-RPC (any ``http(s)://`` URL) or to an in-process eth-tester
chain (``eth-tester``, for demos and tests): checking the chain ID and the contract's code,
quoting fees, signing and broadcasting ``anchor`` transactions, reading receipts, blocks and
``Anchored`` events, and deploying the committed contract. :func:`anchor_checkpoint` and
:func:`find_anchors` are the two verbs the rest of meterlog uses; the log server's job uses
the steps separately so that it never waits on the chain.

Every failure becomes a :class:`ChainError`: :class:`ChainUnavailableError` when the node
cannot be reached, :class:`ChainRefusedError` when it answered with an error. Messages name
the node by scheme, host and port only (an RPC URL often carries an API key in its path)
and never hold the anchoring key: transactions are signed here and only the signed bytes
travel, and every message built while a key is in use is scrubbed of it.

Imports web3, eth_account and eth_tester (this module alone), tlog and anchor's pure modules.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

_RECURSION_LIMIT = sys.getrecursionlimit()
"""The limit before web3's dependencies load: py_ecc and py-evm raise it to 100,000 when they
are imported, which turns any deep recursion in this process (a deeply nested JSON body sent to
the log server, say) from a RecursionError into a C stack overflow that kills the process.
:func:`_restore_recursion_limit` puts it back after they load."""

import eth_tester.exceptions  # noqa: E402 -- after the limit is read
import requests  # noqa: E402
from eth.exceptions import PyEVMError  # noqa: E402
from eth_account import Account  # noqa: E402
from eth_utils.exceptions import ValidationError as EthValidationError  # noqa: E402
from web3 import Web3  # noqa: E402
from web3.exceptions import TransactionNotFound, Web3Exception, Web3RPCError  # noqa: E402
from web3.middleware import ExtraDataToPOAMiddleware  # noqa: E402
from web3.providers.eth_tester import EthereumTesterProvider  # noqa: E402

from anchor.artifact import creation_code, runtime_code  # noqa: E402
from anchor.record import (  # noqa: E402
    ANCHORED_TOPIC,
    AnchorRecord,
    decode_anchored_event,
    encode_anchor_call,
    origin_hash,
    parse_address,
)
from anchor.secret import AnchorKey  # noqa: E402
from tlog.checkpoint import Checkpoint  # noqa: E402
from tlog.errors import MalformedError  # noqa: E402


def _restore_recursion_limit() -> None:
    """Undo what importing py_ecc and py-evm does to the recursion limit (see above)."""
    sys.setrecursionlimit(_RECURSION_LIMIT if _RECURSION_LIMIT < 100_000 else 1_000)


_restore_recursion_limit()

__all__ = [
    "IN_PROCESS",
    "Chain",
    "ChainError",
    "ChainRefusedError",
    "ChainUnavailableError",
    "Fees",
    "Mined",
    "NotAnchorContractError",
    "SignedAnchor",
    "WrongChainError",
    "address_of",
    "anchor_checkpoint",
    "find_anchors",
]

IN_PROCESS = "eth-tester"
"""The endpoint name of the in-process eth-tester chain."""
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_PRIORITY_FEE_WEI = 10**9
"""1 gwei: the tip offered when the node does not suggest one."""
GAS_MARGIN_PERCENT = 20
"""Gas limit = the node's estimate + this margin (an anchor costs the same every time)."""
_IN_PROCESS_ERRORS: tuple[type[Exception], ...] = (
    EthValidationError,
    PyEVMError,
    *(
        value
        for value in vars(eth_tester.exceptions).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ),
)
"""What the in-process chain raises where a node would answer with an error."""
_ANSWER_ERRORS: tuple[type[Exception], ...] = (
    Web3Exception,
    ValueError,
    KeyError,
    TypeError,
    *_IN_PROCESS_ERRORS,
)
"""A node's error (or the in-process chain's), or an answer web3 could not read."""


class ChainError(Exception):
    """Anchoring could not talk to the chain, or the chain said no."""


class ChainUnavailableError(ChainError):
    """The node could not be reached, or did not answer in time."""


class ChainRefusedError(ChainError):
    """The node answered with an error (underpriced, nonce too low, insufficient funds...)."""


class WrongChainError(ChainError):
    """The node serves another chain than the one configured."""


class NotAnchorContractError(ChainError):
    """The address does not hold the committed anchor contract's code."""


def address_of(key: AnchorKey) -> str:
    """The account address of ``key``, lowercase."""
    return str(Account.from_key(key.secret).address).lower()


def _display(endpoint: str) -> str:
    """The node as messages name it: scheme://host[:port], no path, query or credentials."""
    if endpoint == IN_PROCESS:
        return "the in-process eth-tester chain"
    parts = urlsplit(endpoint)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _checksum(address: str) -> Any:
    return Web3.to_checksum_address(address)


@dataclass(frozen=True, slots=True)
class Fees:
    """What a transaction offers to pay per gas: EIP-1559 fees, or a legacy gas price."""

    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    gas_price: int | None = None

    def __post_init__(self) -> None:
        dynamic = self.max_fee_per_gas is not None and self.max_priority_fee_per_gas is not None
        if dynamic == (self.gas_price is not None):
            raise MalformedError("fees", "either both EIP-1559 fees or a gas price")

    @property
    def cap(self) -> int:
        """The most one unit of gas may cost."""
        return cast(int, self.gas_price if self.max_fee_per_gas is None else self.max_fee_per_gas)

    def bumped(self, percent: int) -> Fees:
        """These fees raised by ``percent`` (rounded up): what replaces a stuck transaction."""

        def up(value: int | None) -> int | None:
            return None if value is None else -(-value * (100 + percent) // 100)

        return Fees(up(self.max_fee_per_gas), up(self.max_priority_fee_per_gas), up(self.gas_price))

    def at_least(self, other: Fees) -> Fees:
        """Each fee the higher of the two (for a replacement that must also meet the market)."""

        def most(a: int | None, b: int | None) -> int | None:
            return a if b is None else b if a is None else max(a, b)

        if (self.gas_price is None) != (other.gas_price is None):
            return other
        return Fees(
            most(self.max_fee_per_gas, other.max_fee_per_gas),
            most(self.max_priority_fee_per_gas, other.max_priority_fee_per_gas),
            most(self.gas_price, other.gas_price),
        )

    def capped(self, max_fee_per_gas: int) -> Fees:
        """These fees with no fee above ``max_fee_per_gas``."""
        if self.gas_price is not None:
            return Fees(gas_price=min(self.gas_price, max_fee_per_gas))
        cap = min(cast(int, self.max_fee_per_gas), max_fee_per_gas)
        return Fees(cap, min(cast(int, self.max_priority_fee_per_gas), cap))

    def to_json(self) -> dict[str, int]:
        return {
            name: value
            for name, value in (
                ("max_fee_per_gas", self.max_fee_per_gas),
                ("max_priority_fee_per_gas", self.max_priority_fee_per_gas),
                ("gas_price", self.gas_price),
            )
            if value is not None
        }

    @classmethod
    def from_json(cls, value: dict[str, int]) -> Fees:
        return cls(
            value.get("max_fee_per_gas"),
            value.get("max_priority_fee_per_gas"),
            value.get("gas_price"),
        )


@dataclass(frozen=True, slots=True)
class SignedAnchor:
    """An ``anchor`` transaction, signed and ready to broadcast (again, if need be)."""

    tx_hash: bytes
    raw: bytes
    nonce: int
    fees: Fees
    gas_limit: int


@dataclass(frozen=True, slots=True)
class Mined:
    """A transaction's receipt: where it was mined, whether it ran, and what it anchored."""

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    succeeded: bool
    gas_used: int
    records: tuple[AnchorRecord, ...]
    """The ``Anchored`` events the anchor contract emitted in it."""


class Chain:
    """A connection to one chain (its ID checked once, at :meth:`connect`)."""

    def __init__(self, w3: Web3, endpoint: str, chain_id: int) -> None:
        self.w3 = w3
        self.endpoint = endpoint
        self.chain_id = chain_id
        self.name = _display(endpoint)
        self._lock = threading.RLock()
        """One call at a time: the in-process chain is not thread-safe, and a node does not
        mind."""

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        expected_chain_id: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Chain:
        """Connect to ``endpoint`` (an http(s) URL, or :data:`IN_PROCESS` for a new
        eth-tester chain) and read its chain ID; raises WrongChainError when it is not
        ``expected_chain_id``, ChainUnavailableError when the node cannot be reached."""
        if endpoint == IN_PROCESS:
            w3 = Web3(EthereumTesterProvider())  # loads py-evm, the first time
            _restore_recursion_limit()
        else:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise MalformedError("rpc", "not an http(s):// URL nor eth-tester")
            provider = Web3.HTTPProvider(
                endpoint,
                request_kwargs={"timeout": timeout_s},
                exception_retry_configuration=None,  # the caller decides when to retry
            )
            w3 = Web3(provider)
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        chain = cls(w3, endpoint, 0)
        chain.chain_id = chain.read_chain_id()
        if expected_chain_id is not None and chain.chain_id != expected_chain_id:
            raise WrongChainError(
                f"{chain.name} serves chain {chain.chain_id}, not the configured chain "
                f"{expected_chain_id}"
            )
        return chain

    @contextmanager
    def _calling(self, what: str, key: AnchorKey | None = None) -> Iterator[None]:
        """Turn whatever web3 and its transports raise into a ChainError saying ``what``
        failed; with ``key``, the message is scrubbed of it (it never should hold it)."""
        try:
            with self._lock:
                yield
        except ChainError:
            raise
        except (requests.RequestException, OSError, TimeoutError) as exc:
            message = f"{what}: {self.name} is unreachable ({type(exc).__name__})"
            raise ChainUnavailableError(_scrub(message, key)) from None
        except Web3RPCError as exc:
            message = f"{what}: {self.name} refused: {_rpc_message(exc)}"
            raise ChainRefusedError(_scrub(message, key)) from None
        except _ANSWER_ERRORS as exc:
            # eth-tester raises its own errors; a malformed answer raises the others.
            message = f"{what}: {self.name} failed: {exc}"
            raise ChainRefusedError(_scrub(message, key)) from None

    def request(self, method: str, params: Sequence[object] = ()) -> Any:
        """A raw JSON-RPC call (for tests and demos: evm_snapshot, anvil_mine...)."""
        with self._calling(method):
            response = self.w3.provider.make_request(cast(Any, method), list(params))
        if "error" in response:
            raise ChainRefusedError(f"{method}: {self.name} refused: {response['error']}")
        return response.get("result")

    # -- reading ---------------------------------------------------------------------------

    def read_chain_id(self) -> int:
        """The chain ID the node reports now (``chain_id`` is the one read at connect)."""
        with self._calling("reading the chain ID"):
            return int(self.w3.eth.chain_id)  # asked each time: web3 caches no requests here

    def head(self) -> int:
        """The number of the latest block."""
        with self._calling("reading the latest block number"):
            return int(self.w3.eth.block_number)

    def block_hash(self, number: int) -> bytes | None:
        """The hash of the canonical block ``number``, or None past the head."""
        with self._calling(f"reading block {number}"):
            try:
                block = self.w3.eth.get_block(number)
            except Web3Exception as exc:
                if type(exc).__name__ == "BlockNotFound":
                    return None
                raise
            return bytes(block["hash"])

    def code(self, address: str) -> bytes:
        with self._calling(f"reading the code at {address}"):
            return bytes(self.w3.eth.get_code(_checksum(address)))

    def check_contract(self, address: str) -> None:
        """Raise NotAnchorContractError unless ``address`` holds the committed runtime code."""
        address = parse_address(address, "contract")
        code = self.code(address)
        if code != runtime_code():
            what = "no code" if not code else f"{len(code)} bytes of other code"
            raise NotAnchorContractError(
                f"{address} on chain {self.chain_id} holds {what}, not the meterlog anchor "
                "contract (anchor/solidity/MeterlogAnchor.bin-runtime)"
            )

    def nonce(self, address: str, block: str = "latest") -> int:
        """How many transactions ``address`` has had mined (``latest``) or sent (``pending``)."""
        with self._calling(f"reading the nonce of {address}"):
            return int(self.w3.eth.get_transaction_count(_checksum(address), cast(Any, block)))

    def balance(self, address: str) -> int:
        with self._calling(f"reading the balance of {address}"):
            return int(self.w3.eth.get_balance(_checksum(address)))

    def fees(self) -> Fees:
        """The fees a transaction should offer now: EIP-1559 (twice the base fee plus a tip)
        where the latest block has a base fee, else the node's legacy gas price."""
        with self._calling("quoting fees"):
            block = self.w3.eth.get_block("latest")
            base = block.get("baseFeePerGas")
            if base is None:
                return Fees(gas_price=int(self.w3.eth.gas_price))
            try:
                tip = int(self.w3.eth.max_priority_fee)
            except (Web3Exception, ValueError):
                tip = DEFAULT_PRIORITY_FEE_WEI
            return Fees(2 * int(base) + tip, tip)

    def receipt(self, tx_hash: bytes, contract: str) -> Mined | None:
        """The receipt of ``tx_hash`` if it is in a canonical block, with the ``Anchored``
        events ``contract`` emitted in it; None if it is not mined (or was reorganised away)."""
        contract = parse_address(contract, "contract")
        with self._calling(f"reading the receipt of 0x{tx_hash.hex()}"):
            try:
                receipt = self.w3.eth.get_transaction_receipt(cast(Any, tx_hash))
            except TransactionNotFound:
                return None
            if receipt is None or receipt.get("blockNumber") is None:
                return None
            records = tuple(
                self._record(log)
                for log in receipt["logs"]
                if str(log["address"]).lower() == contract
                and log["topics"]
                and bytes(log["topics"][0]) == ANCHORED_TOPIC
            )
            return Mined(
                tx_hash=tx_hash,
                block_number=int(receipt["blockNumber"]),
                block_hash=bytes(receipt["blockHash"]),
                succeeded=int(receipt["status"]) == 1,
                gas_used=int(receipt["gasUsed"]),
                records=records,
            )

    def knows(self, tx_hash: bytes) -> bool:
        """Whether the node knows the transaction at all (mined or waiting to be)."""
        with self._calling(f"looking up 0x{tx_hash.hex()}"):
            try:
                return self.w3.eth.get_transaction(cast(Any, tx_hash)) is not None
            except TransactionNotFound:
                return False

    def _record(self, log: Any) -> AnchorRecord:
        event = decode_anchored_event([bytes(t) for t in log["topics"]], bytes(log["data"]))
        return AnchorRecord(
            chain_id=self.chain_id,
            contract=str(log["address"]).lower(),
            tx_hash=bytes(log["transactionHash"]),
            block_number=int(log["blockNumber"]),
            block_hash=bytes(log["blockHash"]),
            log_index=int(log["logIndex"]),
            event=event,
        )

    def anchors(
        self,
        contract: str,
        origin: bytes | None = None,
        *,
        from_block: int = 0,
        to_block: int | None = None,
    ) -> list[AnchorRecord]:
        """Every ``Anchored`` event of ``contract`` (for one origin hash, if given) in the
        canonical blocks ``from_block .. to_block`` (default: the head), in chain order.

        When the node refuses a range (many cap eth_getLogs), the range is split in halves
        until it accepts them. An event that does not decode is a ChainRefusedError: the
        contract's code is checked separately, so this means a broken node.
        """
        contract = parse_address(contract, "contract")
        last = self.head() if to_block is None else to_block
        topics: list[Any] = ["0x" + ANCHORED_TOPIC.hex()]
        if origin is not None:
            topics.append("0x" + origin.hex())
        found: list[AnchorRecord] = []
        ranges = [(from_block, last)] if from_block <= last else []
        while ranges:
            lo, hi = ranges.pop(0)
            query: Any = {
                "address": _checksum(contract),
                "fromBlock": lo,
                "toBlock": hi,
                "topics": topics,
            }
            try:
                with self._calling(f"reading anchors in blocks {lo}..{hi}"):
                    logs = self.w3.eth.get_logs(query)
            except ChainRefusedError:
                if lo == hi:
                    raise
                middle = (lo + hi) // 2
                ranges[:0] = [(lo, middle), (middle + 1, hi)]
                continue
            try:
                found.extend(self._record(log) for log in logs)
            except MalformedError as exc:
                raise ChainRefusedError(f"{self.name} returned a malformed event: {exc}") from None
        found.sort(key=lambda r: (r.block_number, r.log_index))
        return found

    # -- writing ---------------------------------------------------------------------------

    def estimate_anchor_gas(self, key: AnchorKey, contract: str) -> int:
        """The gas limit for an anchor: the node's estimate plus :data:`GAS_MARGIN_PERCENT`."""
        call = encode_anchor_call(bytes(32), 2**63, bytes(32))
        with self._calling("estimating an anchor's gas", key):
            estimate = self.w3.eth.estimate_gas(
                {
                    "from": _checksum(address_of(key)),
                    "to": _checksum(contract),
                    "data": cast(Any, call),
                }
            )
        return -(-int(estimate) * (100 + GAS_MARGIN_PERCENT) // 100)

    def sign_anchor(
        self,
        key: AnchorKey,
        contract: str,
        checkpoint: Checkpoint,
        *,
        nonce: int,
        fees: Fees,
        gas_limit: int,
    ) -> SignedAnchor:
        """The signed ``anchor`` transaction for ``checkpoint`` (nothing is sent)."""
        data = encode_anchor_call(
            origin_hash(checkpoint.origin), checkpoint.tree_size, checkpoint.root_hash
        )
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": _checksum(parse_address(contract, "contract")),
            "value": 0,
            "gas": gas_limit,
            "data": data,
        }
        if fees.gas_price is None:
            tx["maxFeePerGas"] = fees.max_fee_per_gas
            tx["maxPriorityFeePerGas"] = fees.max_priority_fee_per_gas
            tx["type"] = 2
        else:
            tx["gasPrice"] = fees.gas_price
        with self._calling("signing an anchor", key):
            signed = Account.sign_transaction(tx, key.secret)
        return SignedAnchor(
            bytes(signed.hash), bytes(signed.raw_transaction), nonce, fees, gas_limit
        )

    def broadcast(self, signed: SignedAnchor) -> None:
        """Send a signed transaction; sending one the node already has is not an error."""
        try:
            with self._calling(f"sending 0x{signed.tx_hash.hex()}"):
                self.w3.eth.send_raw_transaction(signed.raw)
        except ChainRefusedError as exc:
            if "already known" in str(exc).lower() or "already imported" in str(exc).lower():
                return
            raise

    def deploy(self, key: AnchorKey, *, timeout_s: float = 120.0) -> str:
        """Deploy the committed anchor contract from ``key``'s account; its address."""
        sender = _checksum(address_of(key))
        with self._calling("deploying the anchor contract", key):
            nonce = self.w3.eth.get_transaction_count(sender, "pending")
            fees = self.fees()
            tx: dict[str, Any] = {
                "chainId": self.chain_id,
                "nonce": nonce,
                "value": 0,
                "data": creation_code(),
            }
            estimate = self.w3.eth.estimate_gas(cast(Any, {"from": sender, **tx}))
            tx["gas"] = -(-int(estimate) * (100 + GAS_MARGIN_PERCENT) // 100)
            if fees.gas_price is None:
                tx |= {
                    "maxFeePerGas": fees.max_fee_per_gas,
                    "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
                    "type": 2,
                }
            else:
                tx["gasPrice"] = fees.gas_price
            signed = Account.sign_transaction(tx, key.secret)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=timeout_s, poll_latency=0.1
            )
        if int(receipt["status"]) != 1 or receipt.get("contractAddress") is None:
            raise ChainRefusedError(
                f"deploying the anchor contract: 0x{bytes(tx_hash).hex()} failed"
            )
        address = str(receipt["contractAddress"]).lower()
        self.check_contract(address)
        return address

    def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` empty blocks (a development chain only: anvil or eth-tester)."""
        if self.endpoint == IN_PROCESS:
            self.request("evm_mine", [blocks])
        else:
            self.request("anvil_mine", [hex(blocks)])


def _rpc_message(exc: Web3RPCError) -> str:
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        return str(response["error"].get("message", response["error"]))
    return str(exc.message if hasattr(exc, "message") else exc)


def _scrub(message: str, key: AnchorKey | None) -> str:
    if key is None:
        return message
    secret = key.secret.hex()
    for form in (secret, secret.upper(), str(list(key.secret)), repr(key.secret)):
        message = message.replace(form, "<anchor key>")
    return message


def anchor_checkpoint(
    chain: Chain,
    key: AnchorKey,
    contract: str,
    checkpoint: Checkpoint,
    *,
    timeout_s: float = 120.0,
    poll_s: float = 0.2,
) -> AnchorRecord:
    """Anchor ``checkpoint`` and wait (at most ``timeout_s``) until it is mined: the record
    of its ``Anchored`` event. For one-off anchors (the command line, benchmarks); the log
    server's job takes these steps one at a time instead, and waits for confirmations."""
    signed = chain.sign_anchor(
        key,
        contract,
        checkpoint,
        nonce=chain.nonce(address_of(key), "pending"),
        fees=chain.fees(),
        gas_limit=chain.estimate_anchor_gas(key, contract),
    )
    chain.broadcast(signed)
    deadline = time.monotonic() + timeout_s
    while True:
        mined = chain.receipt(signed.tx_hash, contract)
        if mined is not None:
            break
        if time.monotonic() > deadline:
            raise ChainUnavailableError(
                f"0x{signed.tx_hash.hex()} was not mined within {timeout_s:g} s"
            )
        time.sleep(poll_s)
    if not mined.succeeded or len(mined.records) != 1:
        raise ChainRefusedError(f"0x{signed.tx_hash.hex()} ran but anchored nothing")
    return mined.records[0]


def find_anchors(
    chain: Chain,
    contract: str,
    origin: str,
    *,
    from_block: int = 0,
    to_block: int | None = None,
) -> list[AnchorRecord]:
    """Every anchor of the log named ``origin`` in ``contract``'s events, whoever sent it,
    in chain order. The caller decides whose anchors count (see ``AnchorRecord.sender``)."""
    return chain.anchors(contract, origin_hash(origin), from_block=from_block, to_block=to_block)
