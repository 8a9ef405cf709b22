"""Logs for the billing tests, built in memory: signed entries at chosen log times, a tree
and a signed checkpoint (with the log's timestamped cosignature, as the log server signs
them), and billing runs over them with the real engine.

A :class:`Ledger` holds a log's entries in index order. Receipts are signed by a registered
edge key; creators, revenue and edge keys by the operator; manifests by the creator; statements
by the billing key. :meth:`Ledger.bill` runs the engine over the entries ``[0, end)`` under a
checkpoint signed at ``closed_ms``, continuing where the ledger's last logged run ended, and
:meth:`Ledger.log_run` appends that run's statement entries, as ``meterlog billing run`` would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from billing.engine import Engine, Run, RunPlan
from billing.indexes import LeafIndexLists
from billing.policy import EXAMPLE, BillingPolicy, parse_policy
from billing.run import statement_entry
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import (
    Creator,
    EdgeKey,
    Entry,
    Manifest,
    Receipt,
    Revenue,
    Statement,
    encode_entry,
    sign_creator,
    sign_edge_key,
    sign_manifest,
    sign_receipt,
    sign_revenue,
    sign_statement,
)
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, format_vkey
from tlog.parsing import encode_b64
from tlog.statement import statement_chunks, statement_digest

ORIGIN = "billing.test/log"
LOG_KEY = SigningKey(ORIGIN, bytes(range(50, 82)))
OPERATOR = SigningKey(f"{ORIGIN}/operator", bytes(range(51, 83)))
EDGE = SigningKey("edge-1", bytes(range(52, 84)))
PARENT = SigningKey("edge-parent", bytes(range(53, 85)))
ALICE = SigningKey("acct:alice", bytes(range(54, 86)))
BOB = SigningKey("acct:bob", bytes(range(55, 87)))
BILLING = SigningKey("billing.test", bytes(range(56, 88)))
T0 = 1_790_000_000_000
"""A fixed start of time (ms): every test clock counts from here."""
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

POLICY = EXAMPLE.replace("minimum_minor = 1000", "minimum_minor = 0")
"""The example policy, with no minimum payout."""


def policy(**changes: str) -> BillingPolicy:
    """The test policy, with ``key = "value"`` lines replaced (keys as written in it)."""
    text = POLICY
    for key, value in changes.items():
        lines = [
            f"{key} = {value}" if line.split(" = ")[0] == key else line
            for line in text.splitlines()
        ]
        text = "\n".join(lines) + "\n"
    return parse_policy(text.encode())


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Ledger:
    """A log's entries, built in memory."""

    data: list[bytes] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    logged: list[list[Statement]] = field(default_factory=list)
    registered: dict[str, int] = field(default_factory=dict)
    """Each creator's registration in force: its index, which a new one follows."""

    @property
    def size(self) -> int:
        return len(self.data)

    def append(self, entry: Entry, logged_at_ms: int) -> int:
        self.data.append(encode_entry(dataclasses.replace(entry, logged_at_ms=logged_at_ms)))
        return len(self.data) - 1

    # -- the catalog ---------------------------------------------------------------------

    def setup(self, at_ms: int = T0, creators: Sequence[SigningKey] = (ALICE,)) -> None:
        """Register the edge keys and the creators (USD)."""
        for key in (EDGE, PARENT):
            edge = EdgeKey("register", key.name, format_vkey(key.verifier()), 0)
            self.append(sign_edge_key(edge, OPERATOR), at_ms)
        for creator in creators:
            self.creator(creator, at_ms=at_ms)

    def creator(self, key: SigningKey, currency: str = "USD", at_ms: int = T0) -> int:
        follows = self.registered.get(key.name)
        entry = Creator(key.name, format_vkey(key.verifier()), currency, follows=follows)
        self.registered[key.name] = self.append(sign_creator(entry, OPERATOR), at_ms)
        return self.registered[key.name]

    def publish(
        self,
        name: str,
        terms: dict[str, str],
        *,
        creator: SigningKey = ALICE,
        version: int = 1,
        scopes: Sequence[str] = ("inference", "preview", "training"),
        at_ms: int = T0,
    ) -> str:
        """Publish version ``version`` of content ``name``; its manifest digest."""
        manifest = digest_of(f"manifest {name} v{version}")
        entry = Manifest(
            action="publish", creator_id=creator.name, content_id=digest_of(name),
            version=version, manifest=manifest, scopes=tuple(sorted(scopes)),
            terms=tuple(sorted(terms.items())), license=f"https://market.test/{name}",
        )  # fmt: skip
        self.append(sign_manifest(entry, creator), at_ms)
        return manifest

    def withdraw(
        self, name: str, *, creator: SigningKey = ALICE, version: int = 1, at_ms: int = T0
    ) -> None:
        entry = Manifest(
            action="withdraw", creator_id=creator.name, content_id=digest_of(name),
            version=version, manifest=digest_of(f"manifest {name} v{version}"),
        )  # fmt: skip
        self.append(sign_manifest(entry, creator), at_ms)

    def revenue(self, consumer: str, amount_minor: int, reference: str, at_ms: int) -> int:
        entry = Revenue(consumer, "USD", amount_minor, at_ms - DAY_MS, at_ms, reference)
        return self.append(sign_revenue(entry, OPERATOR), at_ms)

    # -- receipts ------------------------------------------------------------------------

    def receipt(
        self,
        request_id: str,
        served_at_ms: int,
        *,
        name: str = "photo-1",
        version: int = 1,
        logged_at_ms: int | None = None,
        edge: SigningKey = EDGE,
        **changes: Any,
    ) -> int:
        fields: dict[str, Any] = {
            "request_id": request_id, "edge": edge.name, "consumer_id": "acme-ai",
            "token_id": "tok-1", "job_id": "job-1", "scope": "training",
            "content_id": digest_of(name), "creator_id": ALICE.name,
            "manifest": digest_of(f"manifest {name} v{version}"), "bytes_sent": 1 << 20,
            "cache": "miss", "served_at_ms": served_at_ms,
        }  # fmt: skip
        fields.update(changes)
        receipt = sign_receipt(Receipt(**fields), edge)
        return self.append(receipt, served_at_ms + 500 if logged_at_ms is None else logged_at_ms)

    # -- runs ------------------------------------------------------------------------------

    def checkpoint(self, size: int, closed_ms: int) -> tuple[str, str]:
        """(signed note, base64 root) of the tree of ``size``, signed at ``closed_ms``."""
        store = MemoryHashStore()
        store.append([leaf_hash(d) for d in self.data[:size]])
        root = root_hash(size, store)
        note = sign_checkpoint(
            Checkpoint(ORIGIN, size, root),
            [LOG_KEY.signer(), LOG_KEY.cosigner(closed_ms // 1000)],
        )
        return note.decode(), encode_b64(root)

    def plan(self, rules: BillingPolicy, closed_ms: int, end: int | None = None) -> RunPlan:
        end = self.size if end is None else end
        note, root = self.checkpoint(end, closed_ms)
        last = self.logged[-1][0] if self.logged else None
        return RunPlan(
            policy=rules, origin=ORIGIN, checkpoint=note, root_hash=root,
            start=0 if last is None else last.range_end, end=end,
            period_start_ms=0 if last is None else last.period_end_ms,
            period_end_ms=closed_ms // 1000 * 1000, billing_key=format_vkey(BILLING.verifier()),
        )  # fmt: skip

    def bill(
        self,
        rules: BillingPolicy,
        closed_ms: int,
        directory: Path | None = None,
        *,
        end: int | None = None,
        **options: Any,
    ) -> Run:
        """Run the engine over ``[0, end)``; the run keeps its lists open (``close``)."""
        plan = self.plan(rules, closed_ms, end)
        lists = LeafIndexLists(directory, budget=64, segment=16)
        try:
            engine = Engine(plan, lists, **options)
            for index, data in enumerate(self.data[: plan.end]):
                engine.feed(index, data)
            run = engine.finish()
        except BaseException:
            lists.close()
            raise
        self.runs.append(run)
        return run

    def log_run(self, run: Run, at_ms: int) -> list[Statement]:
        """Append the run's statement entries, signed by the billing key."""
        entries = []
        for document, data in statements(run).values():
            entry = sign_statement(statement_entry(document, statement_digest(data)), BILLING)
            self.append(entry, at_ms)
            entries.append(entry)
        if entries:
            self.logged.append(entries)
        return entries

    def close(self) -> None:
        for run in self.runs:
            run.lists.close()


def statements(run: Run) -> dict[str, tuple[Any, bytes]]:
    """Each creator's (document, statement bytes) of a run."""
    return {
        s.document.creator_id: (
            s.document,
            b"".join(statement_chunks(s.document.head(), run.indices(s))),
        )
        for s in run.statements
    }
