"""Offline checks of checkpoints and proof bundles, with a report of what was and was not checked.

Owns the verifier's answer to "is this file what it claims to be?" for a signed checkpoint,
for a ``.tlog-proof`` bundle of a meterlog entry, and for a fork evidence file, without any
network. Every check is
tlog's; this module decides which checks a trust policy calls for, runs them in order, stops
at the first failure, and records each step, so a person (or ``--json``) can see exactly
what was verified and what was not. Imports tlog only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tlog.bundle import parse_bundle, verify_bundle_inclusion
from tlog.checkpoint import SignedCheckpoint
from tlog.entry import EdgeKey, Receipt, decode_entry, verify_edge_key, verify_receipt
from tlog.errors import MalformedError, VerificationError
from tlog.evidence import HEADER, HEADER_V1, Anchor, Fork, parse_fork_evidence, verify_fork_evidence
from tlog.note import Verifier
from tlog.parsing import encode_b64
from tlog.policy import Policy, open_checkpoint_with_policy, policy_of

__all__ = [
    "Check",
    "Report",
    "TrustPolicy",
    "anchors_not_checked",
    "check_bundle",
    "check_checkpoint",
    "check_fork_evidence",
    "open_step",
]

Status = Literal["ok", "failed", "not checked"]


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Whom the verifier trusts: the log's keys, and optionally a quorum of witnesses.

    Either plain lists (``log_keys``, ``witnesses``, ``quorum`` of them) or a C2SP
    tlog-policy style ``policy`` (``--policy FILE``), which then wins.
    """

    log_keys: tuple[Verifier, ...] = ()
    witnesses: tuple[Verifier, ...] = ()
    quorum: int = 0
    origin: str | None = None
    policy: Policy | None = None
    relaxed: bool = False
    """Made by :meth:`without_quorum`: the quorum is checked on a later checkpoint instead."""

    @property
    def effective(self) -> Policy:
        """The tlog policy this stands for."""
        if self.policy is not None:
            return self.policy
        return policy_of(self.log_keys, self.witnesses, self.quorum)

    def without_quorum(self) -> TrustPolicy:
        """The same keys with no witness quorum: for a checkpoint that is then proven
        consistent with a newer one that meets the quorum (a past checkpoint of the log's
        history, or the one inside a bundle the log answered a submission with)."""
        rules = self.effective
        relaxed = Policy(rules.logs, rules.witnesses, rules.groups, None)
        return TrustPolicy(
            origin=self.origin, policy=relaxed, relaxed=self.effective.quorum is not None
        )

    def open(self, note: bytes) -> SignedCheckpoint:
        """Verify a signed checkpoint under this policy (raises VerificationError)."""
        return open_checkpoint_with_policy(note, self.effective, origin=self.origin)


@dataclass(frozen=True, slots=True)
class Check:
    """One step of a verification: what it was, how it ended, and the detail."""

    name: str
    status: Status
    detail: str


@dataclass(slots=True)
class Report:
    """The steps of one verification, in order. ``ok`` only if no step failed."""

    subject: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def not_checked(self) -> int:
        return sum(c.status == "not checked" for c in self.checks)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "failed" for c in self.checks)

    def passed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, "ok", detail))

    def failed(self, name: str, error: Exception) -> None:
        self.checks.append(Check(name, "failed", str(error)))

    def skipped(self, name: str, why: str) -> None:
        self.checks.append(Check(name, "not checked", why))

    def to_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks
            ],
            **self.facts,
        }


def _describe_signers(signed: SignedCheckpoint, policy: TrustPolicy) -> str:
    names = [
        f"{key.name}+{key.key_id:08x}"
        for key in policy.effective.log_keys
        if signed.note.signed_by(key)
    ]
    return "signed by " + ", ".join(names)


def _checkpoint_facts(report: Report, signed: SignedCheckpoint) -> None:
    checkpoint = signed.checkpoint
    report.facts.update(
        origin=checkpoint.origin,
        tree_size=checkpoint.tree_size,
        root_hash=encode_b64(checkpoint.root_hash),
        witnesses=[w.name for w in signed.witnesses],
    )


def open_step(report: Report, note: bytes, policy: TrustPolicy) -> SignedCheckpoint | None:
    rules = policy.effective
    try:
        signed = policy.open(note)
    except (VerificationError, MalformedError) as exc:
        report.failed("checkpoint signature", exc)
        return None
    report.passed("checkpoint signature", _describe_signers(signed, policy))
    if rules.quorum is not None:
        report.passed(
            "witness quorum",
            f"{len(signed.witnesses)} of {len(rules.witnesses)} witnesses cosigned "
            f"(policy needs {rules.describe_quorum()})",
        )
    elif policy.relaxed:
        report.skipped("witness quorum", "not required here: proven a prefix of one that has it")
    else:
        report.skipped("witness quorum", "no witness policy given")
    _checkpoint_facts(report, signed)
    return signed


def check_checkpoint(note: bytes, policy: TrustPolicy, subject: str = "checkpoint") -> Report:
    """Verify a signed checkpoint note against a trust policy."""
    report = Report(subject)
    open_step(report, note, policy)
    return report


def check_bundle(
    data: bytes,
    policy: TrustPolicy,
    edge_keys: Sequence[Verifier] = (),
    operator_keys: Sequence[Verifier] = (),
    subject: str = "bundle",
) -> Report:
    """Verify a ``.tlog-proof`` bundle of a meterlog entry, offline.

    Checks, in order: the bundle parses; the checkpoint is signed by a log key (and cosigned
    by the witness quorum, if the policy has one); the entry in the bundle is included at its
    index under that checkpoint; the entry decodes; and its own signature — a receipt's by
    its edge key, an edge-key statement's by the operator — when that key is given.
    """
    report = Report(subject)
    try:
        bundle = parse_bundle(data)
    except MalformedError as exc:
        report.failed("bundle format", exc)
        return report
    report.passed("bundle format", "c2sp.org/tlog-proof@v1")
    signed = open_step(report, bundle.checkpoint, policy)
    if signed is None:
        return report
    try:
        verified = verify_bundle_inclusion(bundle, signed)
    except (VerificationError, MalformedError) as exc:
        report.failed("inclusion", exc)
        return report
    tree_size = verified.checkpoint.checkpoint.tree_size
    report.passed("inclusion", f"entry is leaf {verified.index} of the tree of size {tree_size}")
    report.facts.update(index=verified.index, leaf_hash=encode_b64(verified.leaf_hash))
    try:
        entry = decode_entry(verified.entry)
    except MalformedError as exc:
        report.failed("entry format", exc)
        return report
    report.passed("entry format", f"a canonical {entry.kind} entry")
    report.facts["entry"] = entry.kind
    if isinstance(entry, Receipt):
        report.facts.update(request_id=entry.request_id, edge=entry.edge)
        _check_signature(report, "receipt signature", entry, edge_keys, "--edge-key")
    elif isinstance(entry, EdgeKey):
        report.facts.update(edge=entry.edge)
        _check_signature(report, "operator signature", entry, operator_keys, "--operator-key")
    return report


def _check_signature(
    report: Report,
    name: str,
    entry: Receipt | EdgeKey,
    keys: Sequence[Verifier],
    flag: str,
) -> None:
    if isinstance(entry, Receipt):
        signer, key_id = entry.edge, entry.key_id
    else:
        signer, key_id = "the operator", entry.operator_key_id
    matching = [k for k in keys if f"{k.key_id:08x}" == key_id]
    if not matching:
        report.skipped(name, f"no key given for {signer} (key ID {key_id}); pass it with {flag}")
        return
    key = matching[0]
    try:
        if isinstance(entry, Receipt):
            verify_receipt(entry, key)
        else:
            verify_edge_key(entry, key)
    except (VerificationError, MalformedError) as exc:
        report.failed(name, exc)
        return
    report.passed(name, f"signed by {key.name}+{key.key_id:08x}")


def _describe_side(side: SignedCheckpoint | Anchor, policy: TrustPolicy) -> tuple[str, str]:
    if isinstance(side, Anchor):
        return f"anchor of size {side.tree_size}", (
            f"root {encode_b64(side.root_hash)}, sent by {side.sender} in tx "
            f"0x{side.tx_hash.hex()} (log index {side.log_index}) of block {side.block_number} "
            f"(0x{side.block_hash.hex()}) of chain {side.chain_id}, contract {side.contract}: "
            "as the file states it"
        )
    checkpoint = side.checkpoint
    return f"checkpoint of size {checkpoint.tree_size}", (
        f"root {encode_b64(checkpoint.root_hash)}, {_describe_signers(side, policy)}"
    )


def check_fork_evidence(
    data: bytes, policy: TrustPolicy, subject: str = "evidence"
) -> tuple[Report, Fork | None]:
    """Check a fork evidence file offline (``tlog.evidence``): the report, and the fork if
    the file proves one. What no offline check can see — that an anchor in it is on chain,
    and its sender the log's anchoring address — is left for the caller to check or to
    record as not checked (:func:`anchors_not_checked`)."""
    report = Report(subject)
    try:
        evidence = parse_fork_evidence(data)
    except MalformedError as exc:
        report.failed("format", exc)
        return report, None
    version = HEADER if evidence.prefix is not None else HEADER_V1
    report.passed("format", version)
    try:
        fork = verify_fork_evidence(evidence, policy.effective.log_keys)
    except (VerificationError, MalformedError) as exc:
        report.failed("fork", exc)
        return report, None
    for name, side in (("old", fork.old), ("new", fork.new)):
        what, detail = _describe_side(side, policy)
        report.passed(f"{name}: {what}", detail)
    m, n = fork.tree_size, fork.new_size
    report.passed(
        f"two roots for tree size {m}",
        f"{encode_b64(fork.root_hash)} in the old {_kind(fork.old)}, "
        f"{encode_b64(fork.other_root)} in the first {m} entries of the new "
        f"{_kind(fork.new)}'s tree of size {n} (the consistency proof from them leads to "
        "its root)",
    )
    report.facts.update(
        fork=True,
        origin=fork.origin,
        old_size=m,
        new_size=n,
        old=_kind(fork.old),
        new=_kind(fork.new),
        old_root=encode_b64(fork.root_hash),
        other_root=encode_b64(fork.other_root),
    )
    return report, fork


def _kind(side: SignedCheckpoint | Anchor) -> str:
    return "anchor" if isinstance(side, Anchor) else "checkpoint"


def anchors_not_checked(report: Report, fork: Fork, how: str) -> None:
    """Record, for each anchor of ``fork``, the two facts only a chain can confirm."""
    for anchor in fork.anchors:
        report.skipped(
            f"anchor of size {anchor.tree_size} on chain",
            f"that tx 0x{anchor.tx_hash.hex()} of block 0x{anchor.block_hash.hex()} on chain "
            f"{anchor.chain_id} holds this event of the anchor contract {anchor.contract}: "
            f"{how}",
        )
        report.skipped(
            "anchoring address",
            f"that {anchor.sender} is the log's anchoring address: {how}",
        )
