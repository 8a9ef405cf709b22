"""Online checks against a live log: inclusion, consistency, and a buyer's receipts.

Owns ``verify inclusion``, ``verify consistency`` and ``receipts get`` as plain functions
that return a :class:`~verifier.offline.Report`: the log's checkpoint is verified under the
trust policy, then every proof is computed here from tiles authenticated against it
(:class:`verifier.client.VerifiedTree`) — the log's JSON conveniences are used only to find
an index, never as evidence. A fork (two checkpoints no proof joins) raises
:class:`~tlog.errors.InconsistentLogError` after the evidence file is written. Imports tlog
and verifier.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tlog.bundle import ProofBundle, format_bundle, parse_bundle
from tlog.checkpoint import SignedCheckpoint
from tlog.entry import EdgeKey, Entry, Receipt, decode_entry, verify_edge_key, verify_receipt
from tlog.errors import InconsistentLogError, MalformedError, VerificationError
from tlog.evidence import ForkEvidence, format_fork_evidence
from tlog.hashing import leaf_hash
from tlog.note import Verifier
from tlog.parsing import encode_b64, parse_decimal
from tlog.proofs import verify_inclusion
from verifier.client import LogClient, VerifiedTree
from verifier.offline import Report, TrustPolicy, check_bundle, open_step

__all__ = [
    "ForkFoundError",
    "check_consistency",
    "check_inclusion",
    "fetch_receipts",
    "prove_consistent",
]


class ForkFoundError(Exception):
    """A fork was proven; ``evidence`` is where the evidence file was written."""

    def __init__(self, error: InconsistentLogError, evidence: Path) -> None:
        super().__init__(f"{error.reason}; evidence written to {evidence}")
        self.error = error
        self.evidence = evidence


def _write_evidence(error: InconsistentLogError, directory: Path) -> Path:
    old = _note_size(error.old_checkpoint)
    new = _note_size(error.new_checkpoint)
    path = directory / f"fork-{old}-{new}.evidence"
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(format_fork_evidence(ForkEvidence.from_error(error)))
    partial.replace(path)
    return path


def _note_size(note: bytes) -> str:
    """The tree size line of a signed checkpoint note, for file names ("?" if unreadable)."""
    lines = note.split(b"\n", 2)
    return lines[1].decode("ascii", errors="replace") if len(lines) > 2 else "?"


def prove_consistent(
    client: LogClient, a: SignedCheckpoint, b: SignedCheckpoint, evidence_dir: Path
) -> tuple[int, int]:
    """Prove the smaller of two checkpoints a prefix of the larger, with a proof computed from
    tiles authenticated against the larger. Returns (old, new) sizes. Raises ForkFoundError (after
    writing the evidence) when no proof joins them."""
    old, new = sorted((a, b), key=lambda s: s.checkpoint.tree_size)
    old_size, new_size = old.checkpoint.tree_size, new.checkpoint.tree_size
    try:
        VerifiedTree(client, new).verify_extends(old)
    except InconsistentLogError as exc:
        raise ForkFoundError(exc, _write_evidence(exc, evidence_dir)) from exc
    return old_size, new_size


def _describe_entry(report: Report, entry: Entry) -> None:
    report.facts["entry"] = entry.kind
    if isinstance(entry, Receipt):
        report.facts.update(request_id=entry.request_id, edge=entry.edge)


def _latest(client: LogClient, policy: TrustPolicy, report: Report) -> SignedCheckpoint | None:
    return open_step(report, client.fetch_checkpoint(), policy)


def _find_index(client: LogClient, edge: str, request_id: str) -> int:
    answer = client.get_json(f"v1/receipts/{quote(edge, safe='')}/{quote(request_id, safe='')}")
    index = answer.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise VerificationError(f"the log's answer names no index: {str(answer)[:200]}")
    return index


def check_inclusion(
    client: LogClient,
    policy: TrustPolicy,
    *,
    index: int | None = None,
    bundle: bytes | None = None,
    edge: str | None = None,
    request_id: str | None = None,
    evidence_dir: Path = Path(),
    out: Path | None = None,
) -> Report:
    """Is an entry in the log? By ``index``, by a ``bundle`` (whose checkpoint must also be
    consistent with the log's latest), or by ``edge`` and ``request_id``. ``out``: write a
    ``.tlog-proof`` of the entry under the latest checkpoint, built from tiles."""
    subject = (
        f"index {index}" if index is not None
        else "bundle" if bundle is not None
        else f"receipt {edge}/{request_id}"
    )  # fmt: skip
    report = Report(f"{client.url}: {subject}")
    claimed: bytes | None = None
    if bundle is not None:
        # The bundle's own checkpoint need not meet the quorum: it is proven consistent with
        # the log's latest below, which must.
        offline = check_bundle(bundle, policy.without_quorum(), subject="bundle")
        report.checks.extend(c for c in offline.checks if c.name != "witness quorum")
        if not offline.ok:
            return report
        parsed = parse_bundle(bundle)
        index, claimed = parsed.index, parsed.extra
    latest = _latest(client, policy, report)
    if latest is None:
        return report
    if bundle is not None:
        bundle_checkpoint = policy.without_quorum().open(parse_bundle(bundle).checkpoint)
        old_size, new_size = prove_consistent(client, bundle_checkpoint, latest, evidence_dir)
        report.passed(
            "consistency", f"the bundle's tree ({old_size}) is a prefix of the log's ({new_size})"
        )
    if index is None:
        if edge is None or request_id is None:
            raise MalformedError("query", "give an index, a bundle, or an edge and request id")
        index = _find_index(client, edge, request_id)
    tree = VerifiedTree(client, latest)
    size = tree.tree_size
    if not 0 <= index < size:
        report.failed("inclusion", VerificationError(f"index {index} is not below {size}"))
        return report
    try:
        entry = tree.entry(index)
        proof = tree.inclusion_proof(index)
        verify_inclusion(leaf_hash(entry), index, size, proof, latest.checkpoint.root_hash)
        if claimed is not None and entry != claimed:
            raise VerificationError(f"the log's entry {index} is not the bundle's entry")
        decoded = decode_entry(entry)
        if request_id is not None and (
            not isinstance(decoded, Receipt)
            or (decoded.edge, decoded.request_id) != (edge, request_id)
        ):
            raise VerificationError(f"entry {index} is not receipt {edge}/{request_id}")
    except (VerificationError, MalformedError) as exc:
        report.failed("inclusion", exc)
        return report
    report.passed(
        "inclusion",
        f"entry is leaf {index} of the tree of size {size} (proof computed from tiles)",
    )
    report.facts.update(index=index, leaf_hash=encode_b64(leaf_hash(entry)))
    _describe_entry(report, decoded)
    if out is not None:
        data = format_bundle(ProofBundle(index, tuple(proof), latest.signed_note, extra=entry))
        out.write_bytes(data)
        report.facts["bundle_file"] = str(out)
    return report


def _resolve(client: LogClient, spec: str) -> bytes:
    """A checkpoint named on the command line: a file, a tree size, or ``latest``."""
    if spec == "latest":
        return client.fetch_checkpoint()
    path = Path(spec)
    if path.is_file():
        return path.read_bytes()
    if spec.isdigit():
        return client.fetch_checkpoint_at(parse_decimal(spec, "size"))
    raise MalformedError(spec, "neither a checkpoint file, a tree size nor 'latest'")


def check_consistency(
    client: LogClient, policy: TrustPolicy, old: str, new: str, evidence_dir: Path = Path()
) -> Report:
    """Are two checkpoints of the log (files, sizes, or ``latest``) one history? Raises
    ForkFoundError when they are not."""
    report = Report(f"{client.url}: {old} -> {new}")
    notes = []
    for spec in (old, new):
        try:
            notes.append(_resolve(client, spec))
            policy.without_quorum().open(notes[-1])
        except (VerificationError, MalformedError) as exc:
            report.failed(f"checkpoint {spec}", exc)
            return report
    # The larger must meet the whole policy; the smaller only the log's signature, since it
    # is then proven a prefix of the larger (past checkpoints carry no later cosignatures).
    sizes = [policy.without_quorum().open(n).checkpoint.tree_size for n in notes]
    larger = 1 if sizes[1] >= sizes[0] else 0
    opened = []
    for i, note in enumerate(notes):
        signed = open_step(report, note, policy if i == larger else policy.without_quorum())
        if signed is None:
            return report
        opened.append(signed)
    try:
        old_size, new_size = prove_consistent(client, opened[0], opened[1], evidence_dir)
    except (VerificationError, MalformedError) as exc:
        report.failed("consistency", exc)
        return report
    report.passed(
        "consistency",
        f"the tree of size {old_size} is a prefix of the tree of size {new_size} "
        "(proof computed from tiles)",
    )
    report.facts.update(old_size=old_size, new_size=new_size)
    return report


@dataclass
class _EdgeKeys:
    """Edge keys as the log's own entries state them, fetched once each."""

    client: LogClient
    tree: VerifiedTree
    operator_keys: Sequence[Verifier]
    found: dict[tuple[str, str], EdgeKey] | None = None

    def get(self, edge: str, key_id: str) -> EdgeKey:
        if self.found is None:
            self.found = {}
            listing = self.client.get_json("v1/edge-keys").get("edge_keys")
            for row in listing if isinstance(listing, list) else []:
                index = row.get("entry_index") if isinstance(row, dict) else None
                if not isinstance(index, int) or not 0 <= index < self.tree.tree_size:
                    continue
                entry = decode_entry(self.tree.entry(index))
                if isinstance(entry, EdgeKey):
                    self.found[(entry.edge, f"{entry.verifier.key_id:08x}")] = entry
        statement = self.found.get((edge, key_id))
        if statement is None:
            raise VerificationError(f"the log holds no edge_key entry for {edge}+{key_id}")
        matching = [k for k in self.operator_keys if f"{k.key_id:08x}" == statement.operator_key_id]
        if self.operator_keys and not matching:
            raise VerificationError(f"the edge_key entry for {edge}+{key_id} is not the operator's")
        if matching:
            verify_edge_key(statement, matching[0])
        return statement


def _pages(client: LogClient, params: dict[str, str]) -> Iterator[tuple[object, object]]:
    after: int | None = None
    while True:
        query = dict(params, limit="100")
        if after is not None:
            query["after"] = str(after)
        page = client.get_json("v1/receipts", query)
        rows = page.get("receipts")
        if not isinstance(rows, list):
            raise VerificationError("v1/receipts: no receipts list")
        for row in rows:
            yield (row.get("index"), row.get("bundle")) if isinstance(row, dict) else (None, None)
        next_after = page.get("next_after")
        if not isinstance(next_after, int) or not rows:
            return
        after = next_after


def fetch_receipts(
    client: LogClient,
    policy: TrustPolicy,
    out: Path,
    *,
    consumer: str,
    job: str | None = None,
    operator_keys: Sequence[Verifier] = (),
    evidence_dir: Path = Path(),
) -> Iterator[Report]:
    """A buyer's receipts, one report each: every bundle verified on arrival (checkpoint
    under the policy and consistent with the log's latest; inclusion; the entry is a receipt
    of this consumer and job; its signature by the edge key the log's own edge_key entry
    states, valid when served), then written to ``out`` as ``receipt-<index>.tlog-proof``
    with the receipt as ``receipt-<index>.json``. Nothing unverified is written."""
    head = Report(f"{client.url}: checkpoint")
    latest = _latest(client, policy, head)
    if latest is None:
        yield head
        return
    tree = VerifiedTree(client, latest)
    keys = _EdgeKeys(client, tree, operator_keys)
    consistent: set[bytes] = {latest.signed_note}
    params = {"job": job} if job is not None else {"consumer": consumer}
    for index, text in _pages(client, params):
        report = Report(f"receipt at index {index}")
        yield _one_receipt(
            report,
            text,
            _Fetch(client, policy, latest, consistent, keys, out, evidence_dir, consumer, job),
        )


@dataclass
class _Fetch:
    """What checking each of a buyer's receipts needs."""

    client: LogClient
    policy: TrustPolicy
    latest: SignedCheckpoint
    consistent: set[bytes]
    """Checkpoints already proven consistent with ``latest``."""
    keys: _EdgeKeys
    out: Path
    evidence_dir: Path
    consumer: str
    job: str | None


def _one_receipt(report: Report, text: object, f: _Fetch) -> Report:
    client, policy, latest, consistent, keys = f.client, f.policy, f.latest, f.consistent, f.keys
    out, evidence_dir, consumer, job = f.out, f.evidence_dir, f.consumer, f.job
    if not isinstance(text, str):
        report.failed("bundle format", MalformedError("bundle", "missing"))
        return report
    data = text.encode()
    offline = check_bundle(data, policy.without_quorum(), subject=report.subject)
    report.checks.extend(c for c in offline.checks if c.status != "not checked")
    report.facts.update(offline.facts)
    if not offline.ok:
        return report
    bundle = parse_bundle(data)
    if bundle.checkpoint not in consistent:
        signed = policy.without_quorum().open(bundle.checkpoint)
        prove_consistent(client, signed, latest, evidence_dir)
        consistent.add(bundle.checkpoint)
    report.passed("consistency", "the bundle's checkpoint is consistent with the log's latest")
    entry = decode_entry(bundle.extra or b"")
    try:
        if not isinstance(entry, Receipt):
            raise VerificationError(f"entry {bundle.index} is not a receipt")
        if entry.consumer_id != consumer or (job is not None and entry.job_id != job):
            # Another consumer's receipt of the same job (or a log answering off the query):
            # not this buyer's, so neither kept nor a failure.
            report.skipped("consumer", f"for {entry.consumer_id}/{entry.job_id}, not ours")
            report.facts["skipped"] = True
            return report
        statement = keys.get(entry.edge, entry.key_id)
        until = statement.valid_until_ms
        if entry.served_at_ms < statement.valid_from_ms or (
            until is not None and entry.served_at_ms >= until
        ):
            raise VerificationError(f"served outside the edge key's window (entry {statement})")
        verify_receipt(entry, statement.verifier)
    except (VerificationError, MalformedError) as exc:
        report.failed("receipt signature", exc)
        return report
    report.passed("receipt signature", f"signed by {entry.edge}+{entry.key_id}, a key in the log")
    # Kept under the log's latest checkpoint (with its cosignatures), with a proof from
    # tiles, so the file verifies offline under the whole policy.
    extra = bundle.extra or b""
    proof = tuple(keys.tree.inclusion_proof(bundle.index))
    data = format_bundle(ProofBundle(bundle.index, proof, latest.signed_note, extra=extra))
    final = check_bundle(data, policy, subject=report.subject)
    if not final.ok:
        report.checks.extend(c for c in final.checks if c.status == "failed")
        return report
    report.passed(
        "bundle", f"re-proven under the latest checkpoint ({latest.checkpoint.tree_size})"
    )
    name = f"receipt-{bundle.index}"
    _write(out / f"{name}.tlog-proof", data)
    _write(out / f"{name}.json", bundle.extra or b"")  # the entry exactly as logged
    report.facts["file"] = str(out / f"{name}.tlog-proof")
    return report


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
