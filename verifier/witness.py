"""The witness: cosign a log's checkpoint only if it is consistent with every one cosigned before.

Owns ``meterlog witness serve``'s app: C2SP tlog-witness ``add-checkpoint`` (configured
origins and log keys, the old-size / consistency-proof protocol, Ed25519 cosignature/v1
answers), the monitoring GET of the latest cosigned checkpoint, and the witness's state, one
row per origin in SQLite (the standard library's ``sqlite3``; WAL, ``synchronous=FULL``).
Imports tlog, starlette (this module only in verifier) and the standard library; the
process around it (uvicorn, flags) is ``cli.witness``.

What each answer means (tlog-witness v1.0.0, with HEAD's 422 for two roots of one size):

====  ========================================================================
200   cosigned: the body is the cosignature line(s), ``— <name> <base64>``
400   the body does not parse, or ``old`` is larger than the checkpoint's size
403   no configured log key signed it, or a known key's signature is bad
404   the origin is not configured here
409   ``old`` is not the size this witness last cosigned: body ``<size>\\n``,
      ``Content-Type: text/x.tlog.size``; the log retries from that size
422   the consistency proof fails, a proof from size 0 is not empty, or the
      size equals the cosigned size with another root: a fork, or a bug
429   this client address has had too many answers other than 200 lately
      (:class:`FailureLimit`): ``Retry-After`` says when to come back
====  ========================================================================

Atomicity. The check and the new cosigned size are one ``BEGIN IMMEDIATE`` transaction; the
cosignature is made only after it commits, so the witness never cosigns a checkpoint it has
not durably recorded, and two concurrent requests cannot both pass against the same old
size.

Refusals. Anybody can send the log's own published checkpoints with a proof that proves
nothing, so a refusal is kept only when it is fork evidence (``tlog.evidence``): the proof
leads to the new checkpoint's root and shows another root than the cosigned one at the
cosigned size, or the size is the cosigned size with another root. Then the ``refused``
table keeps the evidence file, once per (origin, cosigned size, the other root), and at most
:data:`MAX_REFUSED` rows per origin (``--max-refused``). Every other 422 (a bad proof, a
proof from a power of two, which leaves the cosigned root out and so can show no other, a
proof where none belongs) is answered and stores nothing. Answers other than 200 also cost
the client address: :class:`FailureLimit` answers 429 before reading the body once it has
had ``burst`` of them, then lets one through every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tlog.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint, parse_checkpoint
from tlog.errors import (
    InconsistentLogError,
    InvalidSignatureError,
    MalformedError,
    ProofError,
    UnknownKeyError,
    VerificationError,
)
from tlog.evidence import ForkEvidence, format_fork_evidence, verify_checkpoints_consistent
from tlog.note import SigningKey, Verifier, format_signature_line
from tlog.witness import (
    CONTENT_TYPE_SIZE,
    AddCheckpoint,
    format_size_body,
    merge_signatures,
    origin_hash,
    parse_add_checkpoint,
)

__all__ = [
    "MAX_REFUSED",
    "Answer",
    "FailureLimit",
    "WitnessState",
    "add_checkpoint",
    "create_witness_app",
]

MAX_BODY = 2 << 20
MAX_REFUSED = 100
"""The most refusals kept per origin. Each is conclusive evidence, which only the log's key
can make: one proves the fork, and a compromised key cannot fill the disk."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosigned (
    origin TEXT PRIMARY KEY,
    tree_size INTEGER NOT NULL,
    root_hash BLOB NOT NULL,
    checkpoint BLOB NOT NULL,
    cosignature TEXT NOT NULL,
    cosigned_at_s INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    old_size INTEGER NOT NULL,
    tree_size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    evidence BLOB NOT NULL,
    refused_at_s INTEGER NOT NULL
);
"""
_SCHEMA_V2 = (
    "ALTER TABLE refused ADD COLUMN other_root BLOB",
    "CREATE UNIQUE INDEX refused_fork ON refused (origin, old_size, other_root)",
    "PRAGMA user_version = 2",
)
"""Refusals are fork evidence only from here on: ``other_root`` is the root the refused
checkpoint's tree has at ``old_size``. Rows of before it (NULL there) are left as they were
and do not count against :data:`MAX_REFUSED`."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, media type, body."""

    status: int
    body: bytes
    media_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Cosigned:
    """The latest checkpoint cosigned for an origin, and the cosignature line."""

    tree_size: int
    root_hash: bytes
    checkpoint: bytes
    cosignature: str


class WitnessState:
    """The witness's durable state: the latest cosigned checkpoint of each origin.

    One connection, used by one thread at a time (a lock); every change is one
    ``BEGIN IMMEDIATE`` transaction, durable when it returns.
    """

    def __init__(self, path: Path, *, max_refused: int = MAX_REFUSED) -> None:
        self.max_refused = max_refused
        """The most refusals kept per origin (:data:`MAX_REFUSED`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")
        if self._db.execute("PRAGMA user_version").fetchone()[0] < 2:
            for statement in _SCHEMA_V2:
                self._db.execute(statement)
        self._db.execute("COMMIT")
        self.lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def latest(self, origin: str) -> Cosigned | None:
        row = self._db.execute(
            "SELECT tree_size, root_hash, checkpoint, cosignature FROM cosigned WHERE origin = ?",
            (origin,),
        ).fetchone()
        return None if row is None else Cosigned(row[0], bytes(row[1]), bytes(row[2]), row[3])

    def refused(self, origin: str) -> list[tuple[int, int, str, bytes]]:
        """(old_size, tree_size, reason, evidence) of every refused checkpoint of an origin
        kept as fork evidence (``meterlog verify evidence`` checks the evidence file)."""
        rows = self._db.execute(
            "SELECT old_size, tree_size, reason, evidence FROM refused WHERE origin = ? "
            "AND other_root IS NOT NULL ORDER BY id",
            (origin,),
        ).fetchall()
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db


def _error(status: int, reason: str) -> Answer:
    return Answer(status, (reason + "\n").encode())


def add_checkpoint(
    state: WitnessState,
    key: SigningKey,
    logs: Mapping[str, Sequence[Verifier]],
    body: bytes,
    now_s: int,
) -> Answer:
    """Handle one add-checkpoint request (see the module docstring); the answer."""
    try:
        request = parse_add_checkpoint(body)
        split = request.checkpoint.rfind(b"\n\n")
        if split < 0:
            raise MalformedError("checkpoint", "not a signed note")
        checkpoint = parse_checkpoint(request.checkpoint[: split + 1].decode("utf-8"))
    except (MalformedError, UnicodeDecodeError) as exc:
        return _error(400, f"malformed request: {exc}")
    log_keys = logs.get(checkpoint.origin)
    if not log_keys:
        return _error(404, f"unknown origin {checkpoint.origin!r}")
    try:
        signed = open_checkpoint(request.checkpoint, log_keys, origin=checkpoint.origin)
    except (InvalidSignatureError, UnknownKeyError) as exc:
        return _error(403, f"not signed by the log: {exc}")
    except (MalformedError, VerificationError) as exc:
        return _error(400, f"malformed checkpoint: {exc}")
    if request.old_size > checkpoint.tree_size:
        return _error(400, f"old {request.old_size} is larger than the checkpoint's size")
    # Signed here, answered only after the transaction that records it has committed.
    line = format_signature_line(signed.note.text, key.cosigner(now_s))
    with state.lock:
        refused = _check_and_record(state, request, signed, log_keys, line=line, now_s=now_s)
    return refused or Answer(200, (line).encode())


def _check_and_record(
    state: WitnessState,
    request: AddCheckpoint,
    signed: SignedCheckpoint,
    log_keys: Sequence[Verifier],
    *,
    line: str,
    now_s: int,
) -> Answer | None:
    """In one transaction: check against the cosigned size, and record the new one (or the
    fork evidence it is)."""
    checkpoint: Checkpoint = signed.checkpoint
    origin = checkpoint.origin
    db = state.transaction()
    try:
        current = state.latest(origin)
        size = 0 if current is None else current.tree_size
        if request.old_size != size:
            db.execute("ROLLBACK")
            return Answer(409, format_size_body(size), CONTENT_TYPE_SIZE)
        refusal = _refusal(request, signed, current, log_keys)
        if refusal is not None:
            reason, fork = refusal
            if fork is not None and _kept(db, origin) < state.max_refused:
                db.execute(
                    "INSERT OR IGNORE INTO refused (origin, old_size, tree_size, reason, "
                    "evidence, refused_at_s, other_root) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (origin, request.old_size, checkpoint.tree_size, reason,
                     format_fork_evidence(fork), now_s, fork.prefix),
                )  # fmt: skip
                db.execute("COMMIT")
            else:
                db.execute("ROLLBACK")
            return _error(422, reason)
        db.execute(
            "INSERT INTO cosigned (origin, tree_size, root_hash, checkpoint, cosignature, "
            "cosigned_at_s) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
            "tree_size = excluded.tree_size, root_hash = excluded.root_hash, "
            "checkpoint = excluded.checkpoint, cosignature = excluded.cosignature, "
            "cosigned_at_s = excluded.cosigned_at_s",
            (
                origin,
                checkpoint.tree_size,
                checkpoint.root_hash,
                signed.signed_note,
                line.removesuffix("\n"),
                now_s,
            ),
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return None


def _kept(db: sqlite3.Connection, origin: str) -> int:
    """How many refusals are kept as fork evidence for ``origin``."""
    row = db.execute(
        "SELECT COUNT(*) FROM refused WHERE origin = ? AND other_root IS NOT NULL", (origin,)
    ).fetchone()
    return int(row[0])


def _refusal(
    request: AddCheckpoint,
    signed: SignedCheckpoint,
    current: Cosigned | None,
    log_keys: Sequence[Verifier],
) -> tuple[str, ForkEvidence | None] | None:
    """Why the checkpoint cannot be cosigned after the one cosigned, with the fork evidence
    when the request is evidence of a fork (see the module docstring); None if it can."""
    if current is None:
        if request.proof:
            return "a proof from size 0 must be empty", None
        return None
    if request.old_size == signed.checkpoint.tree_size and request.proof:
        return "a proof between equal sizes must be empty", None
    cosigned = open_checkpoint(current.checkpoint, log_keys)  # verified when it was stored
    try:
        verify_checkpoints_consistent(cosigned, signed, request.proof)
    except InconsistentLogError as exc:
        reason = f"not consistent with the cosigned size {current.tree_size}: {exc.reason}"
        return reason, ForkEvidence.from_error(exc)
    except ProofError as exc:
        return f"the proof from the cosigned size {current.tree_size} fails: {exc}", None
    return None


@dataclass
class FailureLimit:
    """How many answers other than 200 one client address may have: ``burst`` at once, then
    one every ``interval_s`` (a token bucket per address, at most ``max_clients`` of them,
    the least recently seen forgotten first). A request is admitted by taking a token before
    its body is read; a cosigned one gives it back. ``now_s`` is a monotonic clock reading,
    so tests drive it without sleeping."""

    burst: int = 10
    interval_s: float = 6.0
    max_clients: int = 10_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.interval_s > 0 or self.max_clients < 1:
            raise MalformedError("failure limit", "burst, interval and clients must be positive")

    def admit(self, client: str, now_s: float) -> float | None:
        """Take a token for ``client``: None if admitted, else the seconds until one is
        there (the Retry-After)."""
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now_s))
            tokens = min(float(self.burst), tokens + max(0.0, now_s - at) / self.interval_s)
            if tokens < 1:
                self._keep(client, tokens, now_s)
                return (1 - tokens) * self.interval_s
            self._keep(client, tokens - 1, now_s)
            return None

    def refund(self, client: str) -> None:
        """Give back the token of a request that was answered 200."""
        with self._lock:
            if client in self._buckets:
                tokens, at = self._buckets[client]
                self._buckets[client] = (min(float(self.burst), tokens + 1), at)

    def _keep(self, client: str, tokens: float, now_s: float) -> None:
        self._buckets[client] = (tokens, now_s)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


def create_witness_app(
    key: SigningKey,
    logs: Mapping[str, Sequence[Verifier]],
    db_path: Path,
    clock_s: Callable[[], int],
    *,
    failures: FailureLimit | None = None,
    max_refused: int = MAX_REFUSED,
    monotonic_s: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The witness as a Starlette app; its state opens and closes with the app's lifespan.
    ``clock_s`` is the cosignatures' time; ``monotonic_s`` the failure limit's clock."""
    holder: dict[str, WitnessState] = {}
    limit = FailureLimit() if failures is None else failures

    async def post_add_checkpoint(request: Request) -> Response:
        client = request.client.host if request.client is not None else "-"
        wait_s = limit.admit(client, monotonic_s())
        if wait_s is not None:
            return PlainTextResponse(
                "too many refused requests from this address; retry later\n",
                status_code=429,
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return PlainTextResponse("body too large\n", status_code=413)
        answer = await asyncio.to_thread(
            add_checkpoint, holder["state"], key, logs, body, clock_s()
        )
        if answer.status == 200:
            limit.refund(client)
        # The media type exactly as given: tlog-witness clients compare text/x.tlog.size whole.
        headers = {"Content-Type": answer.media_type}
        return Response(answer.body, status_code=answer.status, headers=headers)

    async def get_checkpoint(request: Request) -> Response:
        wanted = request.path_params["origin_hash"]
        state = holder["state"]
        for origin in logs:
            if origin_hash(origin) == wanted:
                latest = await asyncio.to_thread(_latest, state, origin)
                if latest is None:
                    break
                note = merge_signatures(latest.checkpoint, [latest.cosignature])
                return Response(note, media_type="text/plain; charset=utf-8")
        return PlainTextResponse("no checkpoint cosigned for that origin\n", status_code=404)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        holder["state"] = WitnessState(db_path, max_refused=max_refused)
        try:
            yield
        finally:
            holder.pop("state").close()

    routes = [
        Route("/add-checkpoint", post_add_checkpoint, methods=["POST"]),
        Route("/{origin_hash:str}/checkpoint", get_checkpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _latest(state: WitnessState, origin: str) -> Cosigned | None:
    with state.lock:
        return state.latest(origin)
