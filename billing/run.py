"""A billing run: from a live log and a policy to signed statements, written and logged.

Owns ``meterlog billing run``'s work: open the run against the log (billing.reader), make
one pass over its entries (billing.engine; the entries fetched and authenticated by an entry
reader, a child process, while this one bills), write each creator's statement (canonical JSON,
streamed and hashed as it is written) and its CSV export, sign a ``statement`` entry for each
with the billing key, append them to the log in one request, and check the log's answers
(each a proof bundle of the statement entry under a checkpoint the trust policy accepts).
Imports tlog, verifier, billing and httpx.

Output directory, per run::

    statement-<creator>.json   the statement (its SHA-256 is the logged digest)
    statement-<creator>.csv    the same lines as CSV, one row each, with their leaf indices
    run.json                   the run: range, period, checkpoint, statements and digests,
                               what it could attribute to no one, and entries it refused

Files are written whole or not at all (a ``.partial`` file renamed into place).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from billing.engine import CreatorStatement, Run, RunPlan, bill
from billing.indexes import LeafIndexLists
from billing.policy import BillingPolicy
from billing.reader import RunSource, open_run
from tlog.bundle import parse_bundle
from tlog.entry import Statement, decode_entry, encode_entry, sign_statement
from tlog.errors import VerificationError
from tlog.note import SigningKey, format_vkey
from tlog.parsing import encode_b64
from tlog.statement import StatementDocument, statement_chunks
from verifier.client import LogClient, LogUnavailableError
from verifier.offline import TrustPolicy, check_bundle

__all__ = [
    "AppendRefusedError",
    "RunReport",
    "WrittenStatement",
    "append_statements",
    "plan_of",
    "run_billing",
    "statement_entry",
    "statement_name",
    "write_run",
]

_SAFE = re.compile(r"[^A-Za-z0-9._@-]")
_APPEND_BATCH = 1000
_CSV_BATCH = 4096
CSV_COLUMNS = (
    "line", "type", "period", "for_period_end_ms", "content_id", "manifest", "version", "scope",
    "consumer_id", "quantity", "unit", "rate", "sample_rates", "amount_minor", "fee_minor",
    "reserve_minor", "creator_minor", "leaf_count", "leaf_indices",
)  # fmt: skip


class AppendRefusedError(Exception):
    """The log refused a statement entry (its answer says which and why)."""


@dataclass(frozen=True, slots=True)
class WrittenStatement:
    """One creator's statement as written: its files, digest, document and signed entry."""

    creator_id: str
    json_path: Path
    csv_path: Path
    digest: str
    document: StatementDocument
    entry: Statement
    index: int | None = None
    """Its entry's index in the log, once appended."""


@dataclass
class RunReport:
    """What a run did."""

    plan: RunPlan
    statements: list[WrittenStatement]
    run: Run
    out_dir: Path
    appended: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        plan = self.plan
        return {
            "format": "meterlog-billing-run/v1",
            "origin": plan.origin,
            "range": {"start": plan.start, "end": plan.end},
            "period": {"start_ms": plan.period_start_ms, "end_ms": plan.period_end_ms},
            "checkpoint": plan.checkpoint,
            "policy": plan.policy.digest,
            "currency": plan.policy.currency,
            "billing_key": plan.billing_key,
            "receipts": self.run.receipts,
            "statements": [
                {
                    "creator_id": w.creator_id,
                    "file": w.json_path.name,
                    "csv": w.csv_path.name,
                    "digest": w.digest,
                    "lines": len(w.document.lines),
                    "totals": w.document.totals.to_json(),
                    "entry_index": w.index,
                }
                for w in self.statements
            ],
            "unattributed": dict(sorted(self.run.unattributed.items())),
            "unallocated_revenue": [
                {"entry_index": i, "consumer_id": c, "amount_minor": a}
                for i, c, a in self.run.unallocated_revenue
            ],
            "problems": [{"index": i, "problem": p} for i, p in self.run.problems],
            "appended": self.appended,
        }


def statement_name(creator_id: str) -> str:
    """A file name for a creator's statement: its id made safe, and a short hash of it so
    that two ids that make the same safe name still get two files."""
    tag = hashlib.sha256(creator_id.encode()).hexdigest()[:8]
    return f"statement-{_SAFE.sub('_', creator_id)[:80]}-{tag}"


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> str:
    """Write ``chunks`` to ``path`` (via a .partial file); their SHA-256 as a digest."""
    digest = hashlib.sha256()
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
    return "sha256:" + digest.hexdigest()


def _csv_chunks(run: Run, statement: CreatorStatement) -> Iterable[bytes]:
    """The statement's lines as CSV rows; the last column (the leaf indices, space
    separated) is streamed, not built in memory."""
    head = io.StringIO()
    csv.writer(head, lineterminator="\r\n").writerow(CSV_COLUMNS)
    yield head.getvalue().encode()
    source = run.indices(statement)
    for line in statement.document.lines:
        row = io.StringIO()
        csv.writer(row, lineterminator="").writerow(
            [
                line.number, line.type, line.period, line.for_period_end_ms or "",
                line.content_id, line.manifest, line.version, line.scope or "",
                line.consumer_id or "", line.quantity, line.unit, line.rate,
                " ".join(line.sample_rates), line.amount_minor, line.fee_minor,
                line.reserve_minor, line.creator_minor,
                run.lists.count(statement.line_keys[line.number - 1]),
            ]
        )  # fmt: skip
        yield row.getvalue().encode() + b","
        batch: list[str] = []
        separator = ""
        for index in source("line", line.number):
            batch.append(str(index))
            if len(batch) == _CSV_BATCH:
                yield (separator + " ".join(batch)).encode()
                batch, separator = [], " "
        yield ((separator + " ".join(batch)) if batch else "").encode() + b"\r\n"


def statement_entry(document: StatementDocument, digest: str) -> Statement:
    """The (unsigned) ``statement`` entry that logs a statement document."""
    totals = document.totals
    return Statement(
        digest=digest,
        creator_id=document.creator_id,
        currency=document.currency,
        range_start=document.range_start,
        range_end=document.range_end,
        period_end_ms=document.period_end_ms,
        lines=len(document.lines),
        paid_minor=totals.paid_minor,
        carry_minor=totals.carry_out_minor,
        reserve_minor=totals.reserve_minor,
        reserve_release_ms=document.reserve_release_ms,
        previous=document.previous,
        released=tuple(sorted(d for d, _ in document.released)),
    )


def write_run(run: Run, out_dir: Path, billing_key: SigningKey) -> list[WrittenStatement]:
    """Write every statement of ``run`` and its CSV into ``out_dir``; sign their entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for statement in run.statements:
        document = statement.document
        name = statement_name(document.creator_id)
        json_path = out_dir / f"{name}.json"
        digest = _write_atomic(json_path, statement_chunks(document.head(), run.indices(statement)))
        csv_path = out_dir / f"{name}.csv"
        _write_atomic(csv_path, _csv_chunks(run, statement))
        entry = sign_statement(statement_entry(document, digest), billing_key)
        written.append(WrittenStatement(document.creator_id, json_path, csv_path, digest,
                                        document, entry))  # fmt: skip
    return written


def plan_of(source: RunSource, policy: BillingPolicy, billing_key: str) -> RunPlan:
    signed = source.checkpoint
    return RunPlan(
        policy=policy,
        origin=signed.checkpoint.origin,
        checkpoint=signed.signed_note.decode(),
        root_hash=encode_b64(signed.checkpoint.root_hash),
        start=source.start,
        end=source.end,
        period_start_ms=source.period_start_ms,
        period_end_ms=source.period_end_ms,
        billing_key=billing_key,
    )


def append_statements(
    client: LogClient, trust: TrustPolicy, written: Sequence[WrittenStatement]
) -> list[WrittenStatement]:
    """POST the run's statement entries to the log; each answer must be a bundle that
    verifies under ``trust`` and holds exactly our entry. The statements with their indices."""
    done: list[WrittenStatement] = []
    for at in range(0, len(written), _APPEND_BATCH):
        batch = written[at : at + _APPEND_BATCH]
        body = b"\n".join(encode_entry(w.entry) for w in batch) + b"\n"
        url = f"{client.url}/v1/statements"
        try:
            response = httpx.post(
                url, content=body, headers={"Content-Type": "application/jsonl"}, timeout=60.0
            )
        except httpx.TransportError as exc:
            raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise LogUnavailableError(f"{url}: HTTP {response.status_code}")
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AppendRefusedError(
                f"the log refused the statements (HTTP {response.status_code}): "
                f"{response.text[:300]}"
            ) from exc
        for w, result in zip(batch, results, strict=True):
            done.append(_accepted(w, result, trust))
    return done


def _accepted(w: WrittenStatement, result: object, trust: TrustPolicy) -> WrittenStatement:
    if not isinstance(result, dict) or result.get("status") not in ("logged", "duplicate"):
        error = result.get("error") if isinstance(result, dict) else result
        raise AppendRefusedError(f"the log refused the statement of {w.creator_id}: {error}")
    bundle = str(result.get("bundle", "")).encode()
    report = check_bundle(bundle, trust.without_quorum(), subject=w.creator_id)
    if not report.ok:
        failed = [c for c in report.checks if c.status == "failed"]
        raise VerificationError(f"the log's proof for {w.creator_id} does not verify: {failed}")
    logged = decode_entry(parse_bundle(bundle).extra or b"")
    if not isinstance(logged, Statement) or logged.signed_fields() != w.entry.signed_fields():
        raise VerificationError(f"the log answered for {w.creator_id} with another entry")
    index = report.facts.get("index")
    return WrittenStatement(w.creator_id, w.json_path, w.csv_path, w.digest, w.document,
                            w.entry, index if isinstance(index, int) else None)  # fmt: skip


def run_billing(
    client: LogClient,
    trust: TrustPolicy,
    policy: BillingPolicy,
    billing_key: SigningKey,
    out_dir: Path,
    *,
    through: int | None = None,
    append: bool = True,
    evidence_dir: Path = Path(),
) -> RunReport:
    """One billing run (see the module docstring): every entry of the pass is read from the
    tree of the run's verified checkpoint, authenticated against its root, by an entry
    reader (``verifier.client``) when the client can start one: a child process fetches and
    authenticates, this one bills."""
    source = open_run(client, trust, policy.currency, through=through, evidence_dir=evidence_dir)
    plan = plan_of(source, policy, format_vkey(billing_key.verifier()))
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        LeafIndexLists(out_dir) as lists,
        closing(source.tree.entries(0, plan.end, in_child=True)) as entries,
    ):
        run = bill(plan, entries, lists)
        written = write_run(run, out_dir, billing_key)
    report = RunReport(plan, written, run, out_dir)
    if append and written:
        report.statements = append_statements(client, trust, written)
        report.appended = True
    _write_atomic(
        out_dir / "run.json", [json.dumps(report.to_json(), indent=1, sort_keys=True).encode()]
    )
    return report
