"""Checks anyone can run on a statement: replay it byte for byte, and verify it in full.

Owns ``meterlog billing replay`` (:func:`replay_statement`: re-derive a statement from the
log and the policy; a faithful statement comes out with the same bytes) and ``meterlog verify
statement`` (:func:`verify_statement_file`: the statement is in the log, signed by its billing
key; its checkpoint is the log's and consistent with the latest; every receipt it counts is
in the log under that checkpoint, signed by an edge key the log registered and valid when it
was served; and the amounts recompute). Neither trusts the log's server for anything but
bytes: checkpoints are verified under the trust policy, proofs computed from tiles, entries
authenticated against the checkpoint's root. Imports tlog, verifier and billing.

What a replay proves: the statement is exactly what the engine named in it computes from
the log's entries below its checkpoint and the policy it embeds — the lines, amounts, leaf
indices, exclusions, carry-over, reserves and disputes. It does not prove the policy's rates
fair or the receipts true deliveries; it proves nobody computed, rounded or counted
differently from the published rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from billing.engine import CreatorStatement, Engine, Run, RunPlan, collector_paused
from billing.indexes import LeafIndexLists
from billing.policy import parse_policy
from tlog.checkpoint import SignedCheckpoint, signed_time_s
from tlog.entry import Statement, decode_entry, verify_receipt, verify_statement
from tlog.errors import MalformedError, VerificationError
from tlog.note import Verifier, format_vkey
from tlog.parsing import encode_b64
from tlog.statement import StatementDocument, parse_statement, statement_chunks, statement_digest
from verifier.client import LogClient, VerifiedTree
from verifier.offline import Report, TrustPolicy, open_step
from verifier.online import prove_consistent

__all__ = ["Replayed", "replay_statement", "verify_statement_file"]


@dataclass(frozen=True, slots=True)
class Replayed:
    """A replay's outcome: the statement given, and the bytes the engine produced."""

    document: StatementDocument
    given: bytes
    produced: bytes
    watched: dict[int, tuple[object, Verifier]]

    @property
    def same(self) -> bool:
        return self.given == self.produced

    def first_difference(self) -> int:
        """The first byte offset where the two differ (-1: none)."""
        for at, (a, b) in enumerate(zip(self.given, self.produced, strict=False)):
            if a != b:
                return at
        return -1 if self.same else min(len(self.given), len(self.produced))


def _statement_checkpoint(document: StatementDocument, trust: TrustPolicy) -> SignedCheckpoint:
    """The statement's checkpoint, verified with the log's key (its quorum, if any, is
    checked on the latest checkpoint it is proven consistent with)."""
    signed = trust.without_quorum().open(document.checkpoint.encode())
    checkpoint = signed.checkpoint
    if checkpoint.origin != document.origin:
        raise VerificationError(f"the checkpoint's origin is {checkpoint.origin!r}")
    if checkpoint.tree_size != document.range_end:
        raise VerificationError("the checkpoint's size is not the range's end")
    if encode_b64(checkpoint.root_hash) != document.root_hash:
        raise VerificationError("the checkpoint's root hash is not the statement's")
    return signed


def replay_statement(
    client: LogClient,
    trust: TrustPolicy,
    data: bytes,
    *,
    policy_data: bytes | None = None,
    evidence_dir: Path = Path(),
    lists_dir: Path | None = None,
    watch: frozenset[int] = frozenset(),
) -> Replayed:
    """Re-derive the statement ``data`` from the log (see the module docstring).

    Its checkpoint is verified and proven consistent with the log's latest; its period must
    close at that checkpoint's signed time; the policy is the statement's own text (or
    ``policy_data``, which must have the digest the statement records). ``watch``: leaf
    indices whose receipts (and the edge key the registry held for each) are returned.
    Raises MalformedError, VerificationError, ForkFoundError or LogUnavailableError.
    """
    document = parse_statement(data)
    policy = parse_policy(document.policy.encode() if policy_data is None else policy_data)
    if policy.digest != document.policy_digest:
        raise VerificationError(
            f"the policy's digest is {policy.digest}, the statement's {document.policy_digest}"
        )
    signed = _statement_checkpoint(document, trust)
    latest = trust.open(client.fetch_checkpoint())
    prove_consistent(client, signed, latest, evidence_dir)
    closed_ms = signed_time_s(signed.signed_note, trust.effective.log_keys) * 1000
    if closed_ms != document.period_end_ms:
        raise VerificationError(
            f"the period closes at {document.period_end_ms}; the checkpoint is signed at "
            f"{closed_ms}"
        )
    plan = RunPlan(
        policy=policy,
        origin=document.origin,
        checkpoint=document.checkpoint,
        root_hash=document.root_hash,
        start=document.range_start,
        end=document.range_end,
        period_start_ms=document.period_start_ms,
        period_end_ms=document.period_end_ms,
        billing_key=document.billing_key,
    )
    tree = VerifiedTree(client, signed)
    with (
        LeafIndexLists(lists_dir) as lists,
        closing(tree.entries(0, plan.end, in_child=True)) as entries,  # see run_billing
    ):
        engine = Engine(plan, lists, watch=watch)
        with collector_paused():
            for index, entry in entries:
                engine.feed(index, entry)
        run = engine.finish()
        mine = _find(run, document.creator_id)
        produced = b"" if mine is None else b"".join(_chunks(run, mine))
    return Replayed(document, data, produced, dict(engine.watched))


def _find(run: Run, creator_id: str) -> CreatorStatement | None:
    for statement in run.statements:
        if statement.document.creator_id == creator_id:
            return statement
    return None


def _chunks(run: Run, statement: CreatorStatement) -> list[bytes]:
    return list(statement_chunks(statement.document.head(), run.indices(statement)))


def _logged_entry(
    client: LogClient, trust: TrustPolicy, digest: str
) -> tuple[int, Statement, SignedCheckpoint]:
    """The statement's entry in the log: found through the log's index, read back from the
    tree of its latest verified checkpoint (so included under it)."""
    found = client.get_json(f"v1/statements/{digest}")
    index = found.get("entry_index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise VerificationError(f"the log names no entry for {digest}: {str(found)[:200]}")
    latest = trust.open(client.fetch_checkpoint())
    if index >= latest.checkpoint.tree_size:
        raise VerificationError(f"entry {index} is not under the latest checkpoint")
    entry = decode_entry(VerifiedTree(client, latest).entry(index))
    if not isinstance(entry, Statement) or entry.digest != digest:
        raise VerificationError(f"entry {index} is not the statement {digest}")
    return index, entry, latest


def _entry_matches(entry: Statement, document: StatementDocument) -> str | None:
    """Why the logged entry does not describe the statement, if it does not."""
    totals = document.totals
    expected = {
        "creator_id": document.creator_id,
        "currency": document.currency,
        "range_start": document.range_start,
        "range_end": document.range_end,
        "period_end_ms": document.period_end_ms,
        "lines": len(document.lines),
        "paid_minor": totals.paid_minor,
        "carry_minor": totals.carry_out_minor,
        "reserve_minor": totals.reserve_minor,
        "reserve_release_ms": document.reserve_release_ms,
        "previous": document.previous,
        "released": tuple(sorted(d for d, _ in document.released)),
        "billing_key": document.billing_key,
    }
    for name, value in expected.items():
        if getattr(entry, name) != value:
            return f"the entry's {name} is {getattr(entry, name)!r}, the statement's {value!r}"
    return None


@dataclass
class _Verification:
    """One ``verify statement``: what it checks against, and the report it fills."""

    client: LogClient
    trust: TrustPolicy
    data: bytes
    document: StatementDocument
    digest: str
    policy_data: bytes | None
    billing_keys: Sequence[Verifier]
    evidence_dir: Path
    lists_dir: Path | None
    report: Report

    def logged(self) -> str:
        """The statement's entry is in the log, describes it, and its key signed it."""
        index, entry, latest = _logged_entry(self.client, self.trust, self.digest)
        problem = _entry_matches(entry, self.document)
        if problem is not None:
            raise VerificationError(problem)
        key = entry.verifier
        verify_statement(entry, key)
        report = self.report
        if any(format_vkey(k) == entry.billing_key for k in self.billing_keys):
            report.passed("billing key", f"{key.name}+{key.key_id:08x}, pinned")
        elif self.billing_keys:
            raise VerificationError(f"signed by {entry.billing_key}, not by a billing key given")
        else:
            report.skipped(
                "billing key", f"{entry.billing_key} signed it; pin it with --billing-key"
            )
        report.facts["entry_index"] = index
        return (
            f"entry {index} of the tree of size {latest.checkpoint.tree_size} (read from "
            "tiles), signed by the billing key it names"
        )

    def replayed(self) -> None:
        """Replay the statement, watching its counted receipts: their signatures, then the
        bytes."""
        document, report = self.document, self.report
        counted = frozenset(
            i
            for line in document.lines
            if line.type in ("event", "gib", "savings")  # upfront, revenue: no receipts
            for i in line.leaf_indices
        )
        replayed = replay_statement(
            self.client, self.trust, self.data, policy_data=self.policy_data,
            evidence_dir=self.evidence_dir, lists_dir=self.lists_dir, watch=counted,
        )  # fmt: skip
        report.passed(
            "checkpoint",
            f"of size {document.range_end}, consistent with the log's latest (proof from "
            f"tiles); the period closes at its signed time, {document.period_end_ms}",
        )
        for index in sorted(counted):
            found = replayed.watched.get(index)
            if found is None:
                raise VerificationError(f"leaf {index} is not a receipt by a valid edge key")
            receipt, key = found
            verify_receipt(receipt, key)  # type: ignore[arg-type]
        report.passed(
            "receipts",
            f"all {len(counted)} counted receipts are in the log under the checkpoint (read "
            "from entry bundles authenticated against its root), each signed by an edge key "
            "the log registered and valid when it was served",
        )
        if not replayed.same:
            at = replayed.first_difference()
            raise VerificationError(
                f"the engine computes other bytes from the log and the policy (first "
                f"difference at byte {at}: {replayed.produced[max(at - 40, 0) : at + 40]!r})"
            )
        totals = document.totals
        report.passed(
            "recomputed",
            f"{len(document.lines)} line(s), {totals.gross_minor} gross, {totals.paid_minor} "
            f"paid ({document.currency} minor units): the same bytes",
        )


def verify_statement_file(
    client: LogClient,
    trust: TrustPolicy,
    data: bytes,
    *,
    policy_data: bytes | None = None,
    billing_keys: Sequence[Verifier] = (),
    evidence_dir: Path = Path(),
    lists_dir: Path | None = None,
    subject: str = "statement",
) -> Report:
    """Every check of ``meterlog verify statement``, in order, as a report (stops at the
    first failure). ``billing_keys`` pin the billing key; without them that check is
    reported as not done."""
    report = Report(subject)
    try:
        document = parse_statement(data)
    except MalformedError as exc:
        report.failed("statement format", exc)
        return report
    digest = statement_digest(data)
    report.passed("statement format", f"a canonical {document.engine} statement, {digest}")
    report.facts.update(digest=digest, creator_id=document.creator_id,
                        range=[document.range_start, document.range_end])  # fmt: skip
    if open_step(report, document.checkpoint.encode(), trust.without_quorum()) is None:
        return report
    check = _Verification(client, trust, data, document, digest, policy_data, billing_keys,
                          evidence_dir, lists_dir, report)  # fmt: skip
    try:
        detail = check.logged()
    except (VerificationError, MalformedError) as exc:
        report.failed("statement in the log", exc)
        return report
    report.passed("statement in the log", detail)
    try:
        check.replayed()
    except (VerificationError, MalformedError) as exc:
        report.failed("recomputed", exc)
    return report
