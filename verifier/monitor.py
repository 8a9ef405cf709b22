"""The monitor: follow a log, prove every step consistent, and (``--full``) audit every entry.

Owns what ``meterlog verify monitor`` does and the state it keeps between runs. Each step
fetches the log's checkpoint, verifies it under the trust policy, and proves it consistent
with the last checkpoint the monitor verified, with a consistency proof computed here from
tiles authenticated against the new checkpoint. Two checkpoints no proof joins are a fork:
the monitor writes a self-contained evidence file (``tlog.evidence``) and stops (exit 10).
With ``full``, it then reads every new entry from the entry bundles (each authenticated
against the tree), re-hashes it, replays the edge-key registry as the log's entries build it,
and checks every receipt's signature against the registry as it stood at that index: a
receipt by an unknown, revoked, expired or not-yet-valid key, or with a bad signature, is a
:class:`Problem`, reported and kept in ``problems.jsonl``. Imports tlog and verifier.

State (``--state DIR``), written atomically (a new file renamed over the old):

* ``state.json`` — the last verified checkpoint (verbatim note), how far the entries are
  audited (``next_index``), the replayed registry, and counters. The checkpoint is advanced
  as soon as the new one is proven consistent, before its entries are read, so an audit
  interrupted half way resumes at ``next_index`` against that same (already trusted) tree.
* ``problems.jsonl`` — one JSON object per problem found, appended.
* ``tiles/`` — the tile cache.
* ``fork-<old>-<new>.evidence`` — written on a fork.

The registry rules are the sequencer's (``log_server/sequencer.py``): a key is registered
once; a rotation opens a window for a new key and closes the replaced key's at the new key's
``valid_from_ms``; a revocation closes a registered key's window (never reopens it); the
latest statement about a key wins; a receipt is valid when served in ``[from, until)``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tlog.checkpoint import SignedCheckpoint
from tlog.entry import (
    EdgeKey,
    Receipt,
    decode_entry,
    signed_message,
    verify_edge_key,
    verify_receipt,
)
from tlog.errors import InconsistentLogError, MalformedError, VerificationError
from tlog.evidence import ForkEvidence, format_fork_evidence
from tlog.note import Verifier, format_vkey, parse_vkey, verify_messages
from verifier.client import LogClient, VerifiedTree
from verifier.offline import TrustPolicy
from verifier.workers import exit_with_parent

__all__ = [
    "KeyWindow",
    "Monitor",
    "MonitorState",
    "Problem",
    "Progress",
    "Registry",
    "StepResult",
]

STATE_FILE = "state.json"
PROBLEMS_FILE = "problems.jsonl"
_STATE_VERSION = 1
_SAVE_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with a logged entry: ``index``, what (``kind``), and the detail."""

    index: int
    kind: str
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "problem": self.kind, "detail": self.detail}


@dataclass(slots=True)
class KeyWindow:
    """One edge key as the registry holds it, and the entry that last set it."""

    vkey: str
    valid_from_ms: int
    valid_until_ms: int | None
    entry_index: int
    verifier: Verifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.verifier = parse_vkey(self.vkey)


class Registry:
    """The edge-key registry, replayed entry by entry from the log."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], KeyWindow] = {}

    def apply(self, entry: EdgeKey, index: int) -> str | None:
        """Apply one logged edge-key statement; why it cannot apply, if it cannot."""
        key_id = f"{entry.verifier.key_id:08x}"
        current = self.keys.get((entry.edge, key_id))
        if entry.action == "revoke":
            if current is None:
                return "revokes a key that is not registered"
            if current.valid_from_ms != entry.valid_from_ms:
                return "revokes a window that is not the registered key's"
            until = entry.valid_until_ms
            if current.valid_until_ms is not None and until is not None:
                until = min(until, current.valid_until_ms)
            self.keys[(entry.edge, key_id)] = KeyWindow(
                entry.key, entry.valid_from_ms, until, index
            )
            return None
        if current is not None:
            return "registers a key that is already registered"
        if entry.replaces is not None:
            old = self.keys.get((entry.edge, entry.replaces))
            if old is None:
                return "rotates from a key that is not registered"
            if old.valid_until_ms is None or old.valid_until_ms > entry.valid_from_ms:
                old.valid_until_ms = entry.valid_from_ms
                old.entry_index = index
        self.keys[(entry.edge, key_id)] = KeyWindow(
            entry.key, entry.valid_from_ms, entry.valid_until_ms, index
        )
        return None

    def check(self, receipt: Receipt) -> tuple[str, str] | None:
        """Why the receipt is not validly signed as the registry stands: (kind, detail)."""
        found = self.key_for(receipt)
        if isinstance(found, tuple):
            return found
        try:
            verify_receipt(receipt, found)
        except (VerificationError, MalformedError) as exc:
            return "bad signature", str(exc)
        return None

    def key_for(self, receipt: Receipt) -> Verifier | tuple[str, str]:
        """The key the receipt must be signed by as the registry stands, or why there is
        none: (kind, detail). The signature itself is not checked here."""
        window = self.keys.get((receipt.edge, receipt.key_id))
        served = receipt.served_at_ms
        if (
            window is not None
            and window.valid_from_ms <= served
            and (window.valid_until_ms is None or served < window.valid_until_ms)
        ):
            return window.verifier  # (first, and without the words: a call per receipt)
        who = f"{receipt.edge}+{receipt.key_id}"
        if window is None:
            return "unknown key", f"signed by {who}, which the log never registered before it"
        if served < window.valid_from_ms:
            return "key not yet valid", f"{who} valid from {window.valid_from_ms}, served {served}"
        return (
            "revoked key",
            f"{who} was revoked or retired at {window.valid_until_ms} (entry "
            f"{window.entry_index}), served at {served}",
        )

    def to_json(self) -> list[dict[str, object]]:
        return [
            {
                "edge": edge,
                "key_id": key_id,
                "key": w.vkey,
                "valid_from_ms": w.valid_from_ms,
                "valid_until_ms": w.valid_until_ms,
                "entry_index": w.entry_index,
            }
            for (edge, key_id), w in self.keys.items()
        ]

    @classmethod
    def from_json(cls, rows: object) -> Registry:
        registry = cls()
        if not isinstance(rows, list):
            raise MalformedError("state.registry", "not a list")
        for row in rows:
            if not isinstance(row, dict):
                raise MalformedError("state.registry", "not an object")
            registry.keys[(str(row["edge"]), str(row["key_id"]))] = KeyWindow(
                str(row["key"]),
                int(row["valid_from_ms"]),
                None if row["valid_until_ms"] is None else int(row["valid_until_ms"]),
                int(row["entry_index"]),
            )
        return registry


@dataclass
class MonitorState:
    """What the monitor keeps between runs (see the module docstring)."""

    checkpoint: bytes | None = None
    next_index: int = 0
    registry: Registry = field(default_factory=Registry)
    entries_checked: int = 0
    problems: int = 0
    full: bool = False

    @classmethod
    def load(cls, directory: Path) -> MonitorState:
        path = directory / STATE_FILE
        if not path.exists():
            return cls()
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                checkpoint=None if obj["checkpoint"] is None else obj["checkpoint"].encode(),
                next_index=int(obj["next_index"]),
                registry=Registry.from_json(obj["registry"]),
                entries_checked=int(obj["entries_checked"]),
                problems=int(obj["problems"]),
                full=bool(obj["full"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedError(str(path), f"not a monitor state file: {exc}") from exc

    def save(self, directory: Path) -> None:
        obj = {
            "version": _STATE_VERSION,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.decode(),
            "next_index": self.next_index,
            "registry": self.registry.to_json(),
            "entries_checked": self.entries_checked,
            "problems": self.problems,
            "full": self.full,
        }
        _write_atomic(directory / STATE_FILE, json.dumps(obj, indent=1).encode() + b"\n")


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.partial")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


@dataclass
class _InFlight:
    """A dispatched batch: its signature checks running, its other problems, and the index
    the audit reaches once it is settled."""

    checks: list[Future[list[Problem]]]
    found: list[Problem]
    up_to: int


class _Signatures:
    """Receipt signatures waiting to be checked, a batch at a time, in worker processes.

    The registry replay must run in index order, but each signature check only needs the
    key the registry named at that index. So a batch is sent to worker processes (as key
    strings, signed bytes and signatures: :func:`tlog.note.verify_messages`) and checked
    while this process decodes the next batch; a batch's problems are recorded, and
    ``next_index`` moves past it, only once it is settled. Processes, not threads: a thread
    must win the GIL back after every check, and the decoding thread rarely lets it go.
    """

    def __init__(self) -> None:
        self.items: list[tuple[int, str, bytes, bytes]] = []
        self.found: list[Problem] = []
        """Problems found while replaying the batch being built."""
        self.in_flight: _InFlight | None = None
        self._vkeys: dict[Verifier, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, index: int, receipt: Receipt, key: Verifier) -> None:
        vkey = self._vkeys.get(key)
        if vkey is None:
            vkey = self._vkeys[key] = format_vkey(key)
        self.items.append((index, vkey, signed_message(receipt), receipt.signature))

    def dispatch(self, up_to: int) -> None:
        """Start checking the batch built so far (entries below ``up_to``)."""
        assert self.in_flight is None  # noqa: S101 -- settle() first
        items, self.items = self.items, []
        pool = _pool()
        size = max(1, -(-len(items) // pool_size()))
        checks = [
            pool.submit(_verify_chunk, items[i : i + size]) for i in range(0, len(items), size)
        ]
        self.in_flight = _InFlight(checks, self.found, up_to)
        self.found = []

    def settle(self) -> tuple[list[Problem], int] | None:
        """Wait for the dispatched batch: its problems in index order, and its ``up_to``."""
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return None
        found = [*flight.found, *(p for check in flight.checks for p in check.result())]
        return sorted(found, key=lambda p: p.index), flight.up_to


def _verify_chunk(items: Sequence[tuple[int, str, bytes, bytes]]) -> list[Problem]:
    """In a worker process: the bad signatures among ``items``."""
    answers = verify_messages([item[1:] for item in items])
    return [
        Problem(index, "bad signature", problem)
        for (index, *_), problem in zip(items, answers, strict=True)
        if problem is not None
    ]


_SIGNATURE_BATCH = 2048
_POOL: ProcessPoolExecutor | None = None


def pool_size() -> int:
    """Worker processes for signatures: every core but the one that decodes, at least one."""
    return max(1, (os.cpu_count() or 2) - 1)


def _pool() -> ProcessPoolExecutor:
    """The signature workers, started on first use (``spawn``: the caller may have threads)
    and kept for the process's life."""
    global _POOL  # noqa: PLW0603 -- one pool per process, made only by a full audit
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            pool_size(),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )
    return _POOL


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a long audit is: entries done of total in this step, and the rate."""

    done: int
    total: int
    entries_per_s: float

    @property
    def remaining_s(self) -> float:
        return (self.total - self.done) / self.entries_per_s if self.entries_per_s else 0.0


@dataclass(frozen=True, slots=True)
class StepResult:
    """One monitoring step: the checkpoint now trusted, and what happened."""

    tree_size: int
    previous_size: int | None
    entries_checked: int
    problems: tuple[Problem, ...]
    note: str


class Monitor:
    """Follows one log; see the module docstring. ``step`` raises InconsistentLogError on a
    fork (after writing the evidence file), VerificationError when the log's bytes do not
    verify, and LogUnavailableError when it cannot be reached."""

    def __init__(
        self,
        client: LogClient,
        policy: TrustPolicy,
        state_dir: Path,
        *,
        full: bool = False,
        operator_keys: Sequence[Verifier] = (),
        on_progress: Callable[[Progress], None] | None = None,
        on_problem: Callable[[Problem], None] | None = None,
        progress_interval_s: float = 2.0,
    ) -> None:
        self.client = client
        self.policy = policy
        self.state_dir = state_dir
        self.full = full
        self.operator_keys = {f"{k.key_id:08x}": k for k in operator_keys}
        self.on_progress = on_progress
        self.on_problem = on_problem
        self.progress_interval_s = progress_interval_s
        self.last_evidence: Path | None = None
        """Where the evidence of the last fork found was written."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state = MonitorState.load(state_dir)
        if full and self.state.checkpoint is not None and not self.state.full:
            raise MalformedError(
                "--full", f"{state_dir} was made without --full; use a new --state directory"
            )
        if self.state.checkpoint is None:
            self.state.full = full

    def evidence_path(self, old_size: int, new_size: int) -> Path:
        return self.state_dir / f"fork-{old_size}-{new_size}.evidence"

    def step(self) -> StepResult:
        note = self.client.fetch_checkpoint()
        new = self.policy.open(note)
        trusted_note = self.state.checkpoint
        # What the state holds was verified under the whole policy when it was stored; its
        # cosignatures may since have aged out of a changed policy, its log signature not.
        relaxed = self.policy.without_quorum()
        previous = None if trusted_note is None else relaxed.open(trusted_note)
        message = self._advance(previous, new)
        start = self.state.next_index
        problems: list[Problem] = []
        trusted = relaxed.open(self.state.checkpoint or note)
        if self.full and start < trusted.checkpoint.tree_size:
            problems = self._audit(trusted)
        return StepResult(
            trusted.checkpoint.tree_size,
            None if previous is None else previous.checkpoint.tree_size,
            self.state.next_index - start if self.full else 0,
            tuple(problems),
            message,
        )

    def _advance(self, previous: SignedCheckpoint | None, new: SignedCheckpoint) -> str:
        size = new.checkpoint.tree_size
        if previous is None:
            self.state.checkpoint = new.signed_note
            self.state.save(self.state_dir)
            return f"first checkpoint: size {size} (trusted on first use)"
        old_size = previous.checkpoint.tree_size
        try:
            if size >= old_size:
                VerifiedTree(self.client, new).verify_extends(previous)
            else:
                VerifiedTree(self.client, previous).verify_extends(new)
        except InconsistentLogError as exc:
            path = self.evidence_path(old_size, size)
            _write_atomic(path, format_fork_evidence(ForkEvidence.from_error(exc)))
            self.last_evidence = path
            raise
        if size < old_size:
            return f"the log served an older, consistent checkpoint ({size}); kept {old_size}"
        if size == old_size:
            return f"no new entries: size {size}"
        self.state.checkpoint = new.signed_note
        self.state.save(self.state_dir)
        return f"consistent: {old_size} -> {size}"

    def _audit(self, trusted: SignedCheckpoint) -> list[Problem]:
        """Read, re-hash and check every entry from ``next_index`` up to the trusted size."""
        tree = VerifiedTree(self.client, trusted)
        state = self.state
        start, end = state.next_index, tree.tree_size
        problems: list[Problem] = []
        batch = _Signatures()
        began = last_report = last_save = time.monotonic()

        def settle() -> None:
            """Record the dispatched batch's problems; only then may ``next_index`` move
            past it."""
            settled = batch.settle()
            if settled is None:
                return
            found, up_to = settled
            for problem in found:
                problems.append(problem)
                self._record(problem)
            state.entries_checked += up_to - state.next_index
            state.next_index = up_to

        def sync(up_to: int) -> None:
            """Everything below ``up_to`` checked and recorded: the state may be saved (the
            replayed registry is exactly as it stands at ``next_index``)."""
            settle()
            batch.dispatch(up_to)
            settle()

        for index, data in tree.entries(start, end):
            problem = self._check_entry(index, data, batch)
            if problem is not None:
                batch.found.append(problem)
            if index & 0xFF == 0xFF:
                if len(batch) >= _SIGNATURE_BATCH:
                    settle()  # the batch before this one
                    batch.dispatch(index + 1)
                now = time.monotonic()
                if now - last_save >= _SAVE_EVERY_S:
                    sync(index + 1)
                    state.save(self.state_dir)
                    last_save = now
                if self.on_progress is not None and now - last_report >= self.progress_interval_s:
                    done = index + 1 - start
                    self.on_progress(Progress(done, end - start, done / (now - began)))
                    last_report = now
        sync(end)
        state.save(self.state_dir)
        if self.on_progress is not None and end > start:
            elapsed = max(time.monotonic() - began, 1e-9)
            self.on_progress(Progress(end - start, end - start, (end - start) / elapsed))
        return problems

    def _record(self, problem: Problem) -> None:
        self.state.problems += 1
        with (self.state_dir / PROBLEMS_FILE).open("a", encoding="utf-8") as out:
            out.write(json.dumps(problem.to_json(), sort_keys=True) + "\n")
        if self.on_problem is not None:
            self.on_problem(problem)

    def _check_entry(self, index: int, data: bytes, batch: _Signatures) -> Problem | None:
        """Replay one entry; a receipt whose key is valid joins ``batch`` for its signature."""
        try:
            entry = decode_entry(data)
        except MalformedError as exc:
            return Problem(index, "malformed entry", str(exc))
        registry = self.state.registry
        if isinstance(entry, Receipt):
            found = registry.key_for(entry)
            if isinstance(found, tuple):
                return Problem(index, *found)
            batch.add(index, entry, found)
            return None
        if isinstance(entry, EdgeKey):
            if self.operator_keys:
                key = self.operator_keys.get(entry.operator_key_id)
                if key is None:
                    return Problem(
                        index,
                        "unknown operator key",
                        f"edge_key entry signed by operator key {entry.operator_key_id}; "
                        "not applied",
                    )
                try:
                    verify_edge_key(entry, key)
                except (VerificationError, MalformedError) as exc:
                    return Problem(index, "bad operator signature", f"{exc}; not applied")
            refused = registry.apply(entry, index)
            if refused is not None:
                return Problem(index, "edge_key cannot apply", refused)
        return None
