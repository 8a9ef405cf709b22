"""The anchoring job: the log's latest checkpoint written to an Ethereum chain, and followed
until it is final.

Owns :class:`Anchoring`, whose two steps the app's scheduler calls on a thread of their own
(so the chain never holds up the log, which keeps sequencing and answering whatever the node
does):

* :meth:`Anchoring.anchor_due`, every ``anchor_interval_s``: if the tree grew past the last
  anchor and no anchor is in flight, sign an ``anchor`` transaction for the latest checkpoint,
  store it, then broadcast it (in that order: a crash in between leaves a stored transaction
  that the next step sends again, never one sent but forgotten);
* :meth:`Anchoring.follow`, every ``anchor_poll_interval_s``: follow each anchor in flight
  until ``anchor_confirmations`` blocks hold it (then it is ``final``), and repair what goes
  wrong on the way — see :meth:`Anchoring._follow_one`.

Only one server process anchors at a time: each step first takes or renews a lease in the
database. Every failure of the chain is recorded (``/healthz``, ``/v1/anchors``) and retried
at the next step; the node serving another chain than ``anchor_chain_id`` stops anchoring
for good (and, found at start, refuses the start).

The anchoring key is never logged: messages come from anchor.chain, which scrubs them.
Imports anchor (and through anchor.chain, web3), tlog and log_server.storage.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, replace

from anchor.chain import (
    IN_PROCESS,
    Chain,
    ChainError,
    ChainRefusedError,
    ChainUnavailableError,
    Fees,
    Mined,
    NotAnchorContractError,
    SignedAnchor,
    WrongChainError,
    address_of,
)
from anchor.record import origin_hash
from anchor.secret import AnchorKey
from log_server.config import Config
from log_server.storage import ANCHOR_OPEN, Storage, StoredAnchor
from tlog.checkpoint import Checkpoint
from tlog.parsing import encode_b64

__all__ = ["ANCHOR_STATUSES", "Anchoring", "AnchoringRefusedError", "anchor_json", "preflight"]

log = logging.getLogger("meterlog.anchor")

ANCHOR_STATUSES = ("pending", "mined", "final", "dropped", "failed")
LEASE = "anchoring"
FEE_BUMP_PERCENT = 20
"""A replacement offers this much more than the transaction it replaces (nodes want >= 10%)."""
IN_PROCESS_KEY = AnchorKey(bytes(31) + b"\x01", "eth-tester's first funded account")
"""The in-process chain's first funded account: the demo chain's anchoring key."""


class AnchoringRefusedError(Exception):
    """Anchoring is configured against the wrong chain or contract: the log must not start."""


def preflight(config: Config) -> str | None:
    """Check the anchoring settings against the chain before the server starts.

    Raises AnchoringRefusedError when the node serves another chain than
    ``anchor_chain_id`` or the contract is not the anchor contract; returns a warning when
    the node cannot be reached (the job will keep trying), else None.
    """
    if config.anchor_rpc is None or config.anchor_rpc == IN_PROCESS:
        return None
    try:
        chain = Chain.connect(config.anchor_rpc, expected_chain_id=config.anchor_chain_id)
        chain.check_contract(str(config.anchor_contract))
    except (WrongChainError, NotAnchorContractError) as exc:
        raise AnchoringRefusedError(str(exc)) from None
    except ChainError as exc:
        return f"anchoring will retry: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class _Settings:
    confirmations: int
    replace_after_ms: int
    max_fee_per_gas: int
    lease_ms: int


class Anchoring:
    """The anchoring job of one server process. Its methods are synchronous and not
    thread-safe: the app calls them one at a time, on one thread."""

    def __init__(self, config: Config, storage: Storage, origin: str) -> None:
        if config.anchor_rpc is None:
            raise ValueError("anchoring is not configured")
        self.endpoint = config.anchor_rpc
        self.storage = storage
        self.origin = origin
        self.expected_chain_id = config.anchor_chain_id
        key = config.anchor_key
        if key is None and self.endpoint == IN_PROCESS:
            key = IN_PROCESS_KEY
        if key is None:
            raise ValueError("anchoring needs a key")
        self._key = key
        self.address = address_of(key)
        self.contract = None if config.anchor_contract is None else config.anchor_contract
        poll_ms = int(min(config.anchor_poll_interval_s, config.anchor_interval_s) * 1000)
        self.poll_interval_s = poll_ms / 1000
        self.settings = _Settings(
            confirmations=config.anchor_confirmations,
            replace_after_ms=int(config.anchor_replace_after_s * 1000),
            max_fee_per_gas=config.anchor_max_fee_gwei * 10**9,
            lease_ms=max(60_000, 4 * poll_ms),
        )
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.chain: Chain | None = None
        self.chain_id: int | None = self.expected_chain_id
        self._verified = False
        self.error: str | None = None
        self.error_at_ms: int | None = None
        self.refused: str | None = None
        self._lock = threading.Lock()
        """The steps run one at a time, whichever thread calls them."""
        self._due = False
        self._unavailable = False

    # -- connecting ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect once at start: refuse (AnchoringRefusedError) a wrong chain or contract;
        an unreachable node is only recorded. The in-process chain gets the contract now."""
        try:
            self._connected()
        except (WrongChainError, NotAnchorContractError) as exc:
            raise AnchoringRefusedError(str(exc)) from None
        except ChainError as exc:
            self._failed(exc, None)

    def _connected(self) -> Chain:
        """The chain, connected and checked (chain ID, contract) since the last failure."""
        if self.refused is not None:
            raise WrongChainError(self.refused)
        if self.chain is None:
            self.chain = Chain.connect(self.endpoint)
            if self.endpoint == IN_PROCESS and self.contract is None:
                self.contract = self.chain.deploy(self._key)
        chain = self.chain
        if not self._verified:
            # After a failure, check again: the node behind the URL may have changed.
            chain_id = chain.read_chain_id()
            try:
                if self.expected_chain_id is not None and chain_id != self.expected_chain_id:
                    raise WrongChainError(
                        f"{chain.name} serves chain {chain_id}, not the configured chain "
                        f"{self.expected_chain_id}"
                    )
                chain.check_contract(str(self.contract))
            except (WrongChainError, NotAnchorContractError) as exc:
                self.refused = str(exc)
                log.error("anchoring stopped: %s", exc)
                raise
            chain.chain_id = self.chain_id = chain_id
            self._verified = True
        return chain

    def _failed(self, exc: ChainError, now_ms: int | None) -> None:
        self._unavailable = isinstance(exc, ChainUnavailableError)
        if self._unavailable:
            self._verified = False
        if str(exc) != self.error:
            log.warning("anchoring: %s", exc)
        self.error = str(exc)
        self.error_at_ms = now_ms

    def _run(self, now_ms: int, interval_elapsed: bool) -> None:
        with self._lock:
            self._step(now_ms, interval_elapsed)

    def _step(self, now_ms: int, interval_elapsed: bool) -> None:
        if interval_elapsed:
            self._due = True
        if not self.storage.anchors.claim(LEASE, self.holder, now_ms, self.settings.lease_ms):
            return
        try:
            chain = self._connected()
            if not interval_elapsed:
                if self.endpoint == IN_PROCESS:
                    chain.mine(1)  # the demo chain makes blocks only when asked
                self._follow_all(chain, now_ms)
            self._send_if_needed(chain, now_ms)
        except ChainError as exc:
            self._failed(exc, now_ms)
        else:
            if self._unavailable:
                log.warning("anchoring: %s answers again", self.endpoint_name)
            self.error = self.error_at_ms = None
            self._unavailable = False

    @property
    def endpoint_name(self) -> str:
        return "the chain" if self.chain is None else self.chain.name

    # -- the two steps ---------------------------------------------------------------------

    def anchor_due(self, now_ms: int) -> None:
        """The interval step: anchor the latest checkpoint if the tree grew since the last
        anchor and none is in flight."""
        self._run(now_ms, interval_elapsed=True)

    def follow(self, now_ms: int) -> None:
        """The poll step: follow the anchors in flight and the latest final one; anchor
        again at once if one was dropped."""
        self._run(now_ms, interval_elapsed=False)

    def close(self) -> None:
        self.storage.anchors.release(LEASE, self.holder)

    # -- sending ---------------------------------------------------------------------------

    def _send_if_needed(self, chain: Chain, now_ms: int) -> None:
        """Send an anchor of the latest checkpoint if one is due (an interval passed since the
        last was due, or the last was dropped), the tree grew past the last final anchor, and
        none is in flight. A due anchor stays due until it is sent: one that an unreachable
        node or an anchor still in flight held back goes out at the next poll that can."""
        anchors = self.storage.anchors
        last = anchors.latest()
        if not self._due and not (last is not None and last.status == "dropped"):
            return
        if anchors.latest(ANCHOR_OPEN) is not None:
            return  # one anchor at a time: its nonce is the account's next
        checkpoint = self.storage.latest_checkpoint()
        final = anchors.latest(("final",))
        anchored = 0 if final is None else final.tree_size
        if checkpoint is None or checkpoint.tree_size <= anchored:
            self._due = False
            return
        self._send(
            chain,
            Checkpoint(self.origin, checkpoint.tree_size, checkpoint.root_hash),
            now_ms,
        )

    def _fees(self, chain: Chain, floor: Fees | None = None) -> Fees:
        fees = chain.fees()
        if floor is not None:
            fees = floor.bumped(FEE_BUMP_PERCENT).at_least(fees)
        return fees.capped(self.settings.max_fee_per_gas)

    def _send(self, chain: Chain, checkpoint: Checkpoint, now_ms: int) -> None:
        contract = str(self.contract)
        signed = chain.sign_anchor(
            self._key,
            contract,
            checkpoint,
            nonce=chain.nonce(self.address, "pending"),
            fees=self._fees(chain),
            gas_limit=chain.estimate_anchor_gas(self._key, contract),
        )
        stored = self.storage.anchors.add(
            StoredAnchor(
                tree_size=checkpoint.tree_size,
                root_hash=checkpoint.root_hash,
                status="pending",
                chain_id=chain.chain_id,
                contract=contract,
                sender=self.address,
                nonce=signed.nonce,
                tx_hash=signed.tx_hash,
                tx_hashes=(signed.tx_hash,),
                raw_tx=signed.raw,
                fees_json=json.dumps(signed.fees.to_json(), sort_keys=True),
                gas_limit=signed.gas_limit,
                sent_at_ms=now_ms,
                attempt_at_ms=now_ms,
            )
        )
        self._due = False  # stored: from here on, follow() looks after it
        log.info(
            "anchoring tree size %d in 0x%s (nonce %d)",
            stored.tree_size,
            signed.tx_hash.hex(),
            signed.nonce,
        )
        try:
            chain.broadcast(signed)  # if it does not arrive, follow() sends the bytes again
        except ChainRefusedError as exc:
            # A definite no (no funds, a nonce race): retried at the next interval.
            failed = replace(stored, status="failed", problem=f"the node refused it: {exc}")
            self.storage.anchors.update(failed)
            raise

    # -- following -------------------------------------------------------------------------

    def _follow_all(self, chain: Chain, now_ms: int) -> None:
        head = chain.head()
        for anchor in self.storage.anchors.list(statuses=ANCHOR_OPEN, limit=100):
            self._follow_one(chain, anchor, head, now_ms)
        final = self.storage.anchors.latest(("final",))
        if final is not None and chain.block_hash(int(final.block_number or 0)) != final.block_hash:
            # Reorganised away even after its confirmations: follow it again from scratch.
            self._follow_one(chain, replace(final, status="mined"), head, now_ms)

    def _follow_one(self, chain: Chain, anchor: StoredAnchor, head: int, now_ms: int) -> None:
        """One anchor's next state, stored:

        * mined in a canonical block: ``mined``, then ``final`` at ``anchor_confirmations``
          blocks (``failed`` if the call reverted);
        * was mined but its block left the chain (a reorg): ``pending`` again, counted in
          ``reorgs``, and handled like any pending anchor;
        * pending, and the account's nonce moved past it without it: another transaction took
          the nonce, so it can never be mined: ``dropped``, and a new anchor goes out now;
        * pending, and the node does not know it (lost in a reorg or a restart, evicted, or
          never received): the same signed bytes are sent again, or, if the node refuses them
          (their fees are now below the base fee), re-signed as below;
        * pending for ``anchor_replace_after_s``: re-signed with the same nonce and fees
          raised by FEE_BUMP_PERCENT (at least the market's, at most ``anchor_max_fee_gwei``)
          — or, when an earlier nonce of the account is missing (a gap that would hold it
          forever), at that nonce.
        """
        contract = anchor.contract
        mined = None
        for tx_hash in reversed(anchor.tx_hashes):
            mined = chain.receipt(tx_hash, contract)
            if mined is not None:
                break
        if mined is not None:
            self._mined(anchor, mined, head, now_ms)
            return
        if anchor.status == "mined":
            anchor = replace(
                anchor,
                status="pending",
                block_number=None,
                block_hash=None,
                log_index=None,
                gas_used=None,
                final_at_ms=None,
                reorgs=anchor.reorgs + 1,
                problem=f"block {anchor.block_number} left the canonical chain (a reorg)",
            )
            log.warning("anchor of tree size %d: %s", anchor.tree_size, anchor.problem)
            self.storage.anchors.update(anchor)
        account_nonce = chain.nonce(anchor.sender, "latest")
        if account_nonce > anchor.nonce:
            # Mined meanwhile? Look once more before declaring the nonce lost.
            if any(chain.receipt(h, contract) for h in anchor.tx_hashes):
                return
            dropped = replace(
                anchor,
                status="dropped",
                problem=f"nonce {anchor.nonce} was used by another transaction",
            )
            log.warning("anchor of tree size %d dropped: %s", anchor.tree_size, dropped.problem)
            self.storage.anchors.update(dropped)
            return
        known = chain.knows(anchor.tx_hash)
        waited = now_ms - anchor.attempt_at_ms >= self.settings.replace_after_ms
        if account_nonce < anchor.nonce:
            # A gap: an earlier nonce of the account is missing, so this one cannot be
            # mined. Fill it at once if the node dropped the anchor, else after a wait.
            if not known or waited:
                self._replace(chain, anchor, now_ms, account_nonce, "a nonce gap held it")
        elif not known:
            try:
                self._resend(chain, anchor)
            except ChainRefusedError as exc:
                # The node will not take these bytes again (typically: the base fee rose
                # above their fee cap, and the node evicted them): sign them anew.
                self._replace(chain, anchor, now_ms, account_nonce, f"refused again ({exc})")
        elif waited:
            self._replace(chain, anchor, now_ms, anchor.nonce, "not mined in time")

    def _mined(self, anchor: StoredAnchor, mined: Mined, head: int, now_ms: int) -> None:
        if not mined.succeeded or len(mined.records) != 1:
            failed = replace(
                anchor,
                status="failed",
                tx_hash=mined.tx_hash,
                block_number=mined.block_number,
                block_hash=mined.block_hash,
                gas_used=mined.gas_used,
                problem="the transaction was mined but anchored nothing (reverted)",
            )
            if anchor.status != "failed":
                log.error("anchor of tree size %d failed: %s", anchor.tree_size, failed.problem)
            self.storage.anchors.update(failed)
            return
        record = mined.records[0]
        confirmations = head - mined.block_number + 1
        final = confirmations >= self.settings.confirmations
        problem = anchor.problem
        reorgs = anchor.reorgs
        if anchor.block_hash is not None and anchor.block_hash != mined.block_hash:
            reorgs += 1
            problem = f"block {anchor.block_number} left the canonical chain (a reorg)"
        updated = replace(
            anchor,
            status="final" if final else "mined",
            tx_hash=mined.tx_hash,
            block_number=mined.block_number,
            block_hash=mined.block_hash,
            log_index=record.log_index,
            gas_used=mined.gas_used,
            final_at_ms=(anchor.final_at_ms or now_ms) if final else None,
            reorgs=reorgs,
            problem=problem,
        )
        if updated != anchor:
            if final and anchor.status != "final":
                log.info(
                    "anchor of tree size %d final in block %d", anchor.tree_size, mined.block_number
                )
            self.storage.anchors.update(updated)

    def _resend(self, chain: Chain, anchor: StoredAnchor) -> None:
        signed = SignedAnchor(
            anchor.tx_hash,
            anchor.raw_tx,
            anchor.nonce,
            Fees.from_json(json.loads(anchor.fees_json)),
            anchor.gas_limit,
        )
        chain.broadcast(signed)
        if anchor.problem is None or "sent again" not in anchor.problem:
            why = "the node did not know it" if anchor.problem is None else anchor.problem
            self.storage.anchors.update(replace(anchor, problem=f"{why}; sent again"))

    def _replace(
        self, chain: Chain, anchor: StoredAnchor, now_ms: int, nonce: int, why: str
    ) -> None:
        old_fees = Fees.from_json(json.loads(anchor.fees_json))
        fees = self._fees(chain, old_fees)
        if nonce == anchor.nonce and fees == old_fees:
            cap = self.settings.max_fee_per_gas
            problem = f"{why}, and its fees are at the cap ({cap} wei per gas)"
            self.storage.anchors.update(replace(anchor, attempt_at_ms=now_ms, problem=problem))
            raise ChainRefusedError(f"anchor of tree size {anchor.tree_size}: {problem}")
        checkpoint = Checkpoint(self.origin, anchor.tree_size, anchor.root_hash)
        signed = chain.sign_anchor(
            self._key,
            anchor.contract,
            checkpoint,
            nonce=nonce,
            fees=fees,
            gas_limit=anchor.gas_limit,
        )
        replaced = replace(
            anchor,
            nonce=nonce,
            tx_hash=signed.tx_hash,
            tx_hashes=(*anchor.tx_hashes, signed.tx_hash),
            raw_tx=signed.raw,
            fees_json=json.dumps(fees.to_json(), sort_keys=True),
            attempt_at_ms=now_ms,
            problem=f"replaced 0x{anchor.tx_hash.hex()}: {why}",
        )
        log.warning("anchor of tree size %d: %s", anchor.tree_size, replaced.problem)
        self.storage.anchors.update(replaced)
        try:
            chain.broadcast(signed)
        except ChainRefusedError as exc:
            # Refused: forget this attempt (it never reached the chain) and try again later.
            refused = replace(anchor, attempt_at_ms=now_ms, problem=f"re-signing refused: {exc}")
            self.storage.anchors.update(refused)
            raise

    # -- reporting -------------------------------------------------------------------------

    def status(self, tree_size: int, now_ms: int) -> dict[str, object]:
        """What ``/healthz`` says of anchoring: how far behind the log it is, and why."""
        anchors = self.storage.anchors
        final = anchors.latest(("final",))
        in_flight = anchors.latest(ANCHOR_OPEN)
        anchored = 0 if final is None else final.tree_size
        last = anchors.latest()
        error = self.refused or self.error
        if error is None and last is not None and last.status == "failed":
            error = last.problem
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "address": self.address,
            "anchored_tree_size": anchored,
            "lag_entries": max(tree_size - anchored, 0),
            "last_final_age_ms": None
            if final is None or final.final_at_ms is None
            else now_ms - final.final_at_ms,
            "in_flight": None if in_flight is None else "0x" + in_flight.tx_hash.hex(),
            "error": error,
        }

    def describe(self) -> dict[str, object]:
        """Where this log anchors: what ``/v1/anchors`` says before the list."""
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "address": self.address,
            "origin_hash": "0x" + origin_hash(self.origin).hex(),
            "confirmations": self.settings.confirmations,
        }


def anchor_json(anchor: StoredAnchor) -> dict[str, object]:
    """One stored anchor as ``/v1/anchors`` serves it."""
    return {
        "id": anchor.id,
        "status": anchor.status,
        "tree_size": anchor.tree_size,
        "root_hash": encode_b64(anchor.root_hash),
        "chain_id": anchor.chain_id,
        "contract": anchor.contract,
        "sender": anchor.sender,
        "nonce": anchor.nonce,
        "tx_hash": "0x" + anchor.tx_hash.hex(),
        "block_number": anchor.block_number,
        "block_hash": None if anchor.block_hash is None else "0x" + anchor.block_hash.hex(),
        "log_index": anchor.log_index,
        "gas_used": anchor.gas_used,
        "sent_at_ms": anchor.sent_at_ms,
        "final_at_ms": anchor.final_at_ms,
        "reorgs": anchor.reorgs,
        "problem": anchor.problem,
    }
