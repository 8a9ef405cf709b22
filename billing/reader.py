"""Reading a log for billing, as an auditor reads it: verified checkpoints, authenticated entries.

Owns how a run finds its checkpoint, range and period in a live log, through the verifier's
tile client (``verifier.client``): the latest checkpoint verified under the trust policy; the
run's checkpoint (the latest, or one of an earlier size from the log's history, proven
consistent with the latest from tiles); its signed time; and the last run of the currency,
from the log's statement index, read back as an authenticated entry. Every entry a run uses
comes out of :class:`~verifier.client.VerifiedTree` under the run's checkpoint, so no entry
that checkpoint does not commit to is ever billed. Imports tlog, verifier and billing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlog.checkpoint import SignedCheckpoint, signed_time_s
from tlog.entry import Statement, decode_entry
from tlog.errors import VerificationError
from verifier.client import LogClient, VerifiedTree
from verifier.offline import TrustPolicy
from verifier.online import prove_consistent

__all__ = ["RunSource", "last_run", "open_run", "run_checkpoint"]


@dataclass(frozen=True, slots=True)
class RunSource:
    """A run's view of the log: the verified checkpoint it bills up to, the tree of that
    checkpoint, the period's close (its signed time) and the last run of the currency."""

    client: LogClient
    checkpoint: SignedCheckpoint
    tree: VerifiedTree
    period_end_ms: int
    previous: Statement | None

    @property
    def start(self) -> int:
        return 0 if self.previous is None else self.previous.range_end

    @property
    def end(self) -> int:
        return self.checkpoint.checkpoint.tree_size

    @property
    def period_start_ms(self) -> int:
        return 0 if self.previous is None else self.previous.period_end_ms


def run_checkpoint(
    client: LogClient, trust: TrustPolicy, through: int | None, evidence_dir: Path
) -> SignedCheckpoint:
    """The checkpoint a run bills up to: the log's latest (verified under ``trust``), or its
    checkpoint of size ``through``, verified and proven consistent with the latest. A size
    beyond the latest is not committed, and refused."""
    latest = trust.open(client.fetch_checkpoint())
    size = latest.checkpoint.tree_size
    if through is None or through == size:
        return latest
    if through > size:
        raise VerificationError(
            f"entries up to {through} are not committed: the log's latest verified checkpoint "
            f"is of size {size}"
        )
    signed = trust.without_quorum().open(client.fetch_checkpoint_at(through))
    prove_consistent(client, signed, latest, evidence_dir)
    return signed


def last_run(client: LogClient, tree: VerifiedTree, currency: str) -> Statement | None:
    """The latest ``statement`` entry of ``currency`` below the tree's size, as the log's
    statement index names it and the tree authenticates it. The billing pass then checks
    that no later run hides in the entries it reads (``Engine.finish``)."""
    answer = client.get_json("v1/statements", {"currency": currency, "latest": "1", "limit": "1"})
    found = answer.get("statements")
    if not isinstance(found, list):
        raise VerificationError("v1/statements: the answer has no statements list")
    if not found:
        return None
    index = found[0].get("entry_index") if isinstance(found[0], dict) else None
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise VerificationError(f"v1/statements: no entry index in {str(found[0])[:200]}")
    if index >= tree.tree_size:
        raise VerificationError(
            f"the last {currency} run's statement (index {index}) is not below the checkpoint "
            f"of size {tree.tree_size}: a run up to it would bill that run's range again"
        )
    entry = decode_entry(tree.entry(index))
    if not isinstance(entry, Statement) or entry.currency != currency:
        raise VerificationError(f"entry {index} is not a {currency} statement")
    return entry


def open_run(
    client: LogClient,
    trust: TrustPolicy,
    currency: str,
    *,
    through: int | None = None,
    evidence_dir: Path = Path(),
) -> RunSource:
    """Everything a run needs from the log before its pass. The range is never empty: the
    last run's statements lie beyond its end and below the checkpoint (``last_run``)."""
    signed = run_checkpoint(client, trust, through, evidence_dir)
    tree = VerifiedTree(client, signed)
    previous = last_run(client, tree, currency)
    period_end_ms = signed_time_s(signed.signed_note, trust.effective.log_keys) * 1000
    source = RunSource(client, signed, tree, period_end_ms, previous)
    if period_end_ms < source.period_start_ms:
        raise VerificationError(
            f"the checkpoint's signed time {period_end_ms} is before the last run's close "
            f"{source.period_start_ms}"
        )
    return source
