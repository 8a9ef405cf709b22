"""The log's HTTP surface: ``create_app(config)`` builds the Starlette app.

Owns the route list, request parsing, the mapping of errors to HTTP statuses (in one place,
the exception handlers), and the lifespan that opens storage and starts the scheduler (seal
the pool every ``pool_interval_s``; re-sign the checkpoint every ``checkpoint_interval_s``).
Handlers are thin: parse, call storage, the pool or tlog, format. The browser portal's static
files are mounted at ``/portal/`` (portal.portal_mount). Imports tlog, log_server and portal.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import json
import re
import time
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import orjson
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from log_server.budgets import Budgets
from log_server.catalog import (
    admin_fields,
    creator_json,
    dispute_json,
    manifest_json,
    query_text,
    revenue_json,
    statement_json,
    verified_signer,
)
from log_server.config import Config, DataDir, read_billing_keys
from log_server.documents import StatementDocuments
from log_server.metrics import Metrics
from log_server.openapi import OPENAPI
from log_server.sequencer import (
    Conflict,
    Logged,
    LogIdentity,
    OverloadedError,
    Pool,
    Rejected,
    sequence,
)
from log_server.signatures import SignatureChecker, SignedItem
from log_server.storage import EdgeKeyRecord, EntryRecord, Storage, StoredCheckpoint
from log_server.witnesses import Witnessing, witness_id
from portal import portal_mount
from tlog.bundle import ProofBundle, format_bundle
from tlog.entry import (
    Creator,
    Dispute,
    EdgeKey,
    Entry,
    Manifest,
    Receipt,
    Revenue,
    Statement,
    canonical_json,
    decode_entry,
    sign_creator,
    sign_dispute,
    sign_edge_key,
    sign_revenue,
    signed_message,
)
from tlog.errors import MalformedError
from tlog.note import format_vkey
from tlog.parsing import MAX_INT63, decode_b64, encode_b64, parse_decimal
from tlog.policy import parse_policy
from tlog.proofs import consistency_proof, inclusion_proof, inclusion_proofs
from tlog.tiles import (
    ENTRIES,
    TILE_HEIGHT,
    TILE_WIDTH,
    encode_entry_bundle,
    parse_tile_path,
    tile_hash_indexes,
)

if TYPE_CHECKING:
    from log_server.anchoring import Anchoring

__all__ = ["create_app"]

_IMMUTABLE = "public, max-age=31536000, immutable"
_SHORT = "public, max-age=1"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _now_s() -> int:
    return time.time_ns() // 1_000_000_000


@dataclass(frozen=True, slots=True)
class _SignerBudgets:
    """How fast one signer may grow the log through the routes without a token, per server
    process (log_server.budgets): receipts per edge, manifests and disputes per creator,
    statements per billing key."""

    receipts: Budgets
    creators: Budgets
    statements: Budgets

    @classmethod
    def of(cls, config: Config) -> _SignerBudgets:
        return cls(
            Budgets(config.receipt_rate, config.receipt_burst),
            Budgets(config.creator_rate, config.creator_burst),
            Budgets(config.statement_rate, config.statement_burst),
        )


class _OverBudgetError(Exception):
    """A signer is over its budget: 429, with Retry-After."""

    def __init__(self, field: str, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.retry_after_s = retry_after_s


def _admit(budgets: Budgets, counts: Mapping[str, int], field: str, what: str) -> None:
    """Admit a request of ``counts[signer]`` entries per verified signer, or raise
    _OverBudgetError naming ``field``; ``what`` the entries, for the message."""
    over = budgets.admit(counts, time.monotonic())
    if over is not None:
        raise _OverBudgetError(
            field,
            f"{over.signer} is over its budget of {budgets.rate_per_s:g} {what} a second "
            f"(burst {budgets.burst}); retry after {over.retry_after_s} s",
            over.retry_after_s,
        )


def _charge(budgets: Budgets, signers: Sequence[str], appended: Sequence[bool]) -> None:
    """Charge each signer for its entries the seal appended (not duplicates, not refusals)."""
    counts = Counter(signer for signer, new in zip(signers, appended, strict=True) if new)
    budgets.charge(counts, time.monotonic())


@dataclass
class _State:
    config: Config
    storage: Storage
    pool: Pool
    keys: DataDir
    metrics: Metrics
    work: ThreadPoolExecutor
    """One thread for the CPU-bound part of submissions (checking receipts, building
    answers): concurrent batches queue for it instead of crowding the sequencer's thread
    off the GIL."""
    signatures: SignatureChecker
    budgets: _SignerBudgets
    in_flight: int = 0
    """Receipts of submissions between arrival and answer (checked, pooled or answered):
    kept at most ``max_pending``, so the work queued in the server is bounded too."""
    witnessing: Witnessing | None = None
    anchoring: Anchoring | None = None
    """The anchoring job, when --anchor-rpc is set (log_server.anchoring)."""
    billing_keys: frozenset[str] = frozenset()
    """The billing keys (verifier key strings) whose statements the log accepts."""
    documents: StatementDocuments | None = None
    """The statement documents it serves (--statements DIR), if any."""


_T = TypeVar("_T")
_E = TypeVar("_E", Manifest, Dispute, Statement)


async def _on_work_thread(state: _State, function: Callable[..., _T], *args: object) -> _T:
    return await asyncio.get_running_loop().run_in_executor(state.work, function, *args)


class _JSON(JSONResponse):
    """A JSON response written by orjson: an answer to a batch holds a bundle per receipt,
    about half a megabyte for 256 receipts, and Python's encoder took 8% of the server."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def _state(request: Request) -> _State:
    state: _State = request.app.state.log
    return state


def _error(status: int, field: str, reason: str) -> _JSON:
    return _JSON({"error": {"field": field, "reason": reason}}, status_code=status)


# -- writing ------------------------------------------------------------------------------


def _parse_batch(body: bytes, content_type: str, limit: int) -> list[object]:
    """The submitted items: a JSON array, or JSON Lines (each line one canonical receipt)."""
    text = body.decode("utf-8", errors="strict")
    if (
        "json-seq" in content_type
        or "jsonl" in content_type
        or "ndjson" in content_type
        or (not text.lstrip().startswith("["))
    ):
        items: list[object] = [line.encode() for line in text.split("\n") if line.strip()]
    else:
        value = json.loads(text, parse_float=_reject_float, parse_constant=_reject_float)
        if not isinstance(value, list):
            raise MalformedError("body", "not a JSON array of receipts")
        items = list(value)
    if not items:
        raise MalformedError("body", "no receipts")
    if len(items) > limit:
        raise HTTPException(413, f"{len(items)} receipts in one batch; the limit is {limit}")
    return items


def _reject_float(text: str) -> object:
    raise MalformedError("body", f"number {text} is not an integer")


@dataclass
class _Keys:
    """The registry as one batch sees it: each edge key is read once per batch."""

    storage: Storage
    records: dict[tuple[str, str], EdgeKeyRecord | None] = field(default_factory=dict)

    def record(self, edge: str, key_id: str) -> EdgeKeyRecord | None:
        if (edge, key_id) not in self.records:
            self.records[(edge, key_id)] = self.storage.edge_key(edge, key_id)
        return self.records[(edge, key_id)]


def _rejected(field: str, reason: str) -> dict[str, object]:
    return {"status": "rejected", "error": {"field": field, "reason": reason}}


def _check(item: object, state: _State, now_ms: int, keys: _Keys) -> tuple[Receipt, SignedItem]:
    """One submitted receipt, checked up to its signature: the receipt, and what its
    signature must verify (its registered edge key and signed bytes). Raises MalformedError
    naming the field that is wrong.

    The key is found by the receipt's edge and key ID; the registry only holds keys whose
    ``edge_key`` entry was validated, so its name is the edge's and its ID the key ID.
    """
    entry = decode_entry(item if isinstance(item, bytes) else canonical_json(item))
    if not isinstance(entry, Receipt):
        raise MalformedError("receipt.kind", "only receipts may be submitted here")
    if entry.logged_at_ms is not None:
        raise MalformedError("receipt.logged_at_ms", "is set by the log, not the edge")
    config = state.config
    if entry.served_at_ms > now_ms + config.max_future_skew_ms:
        raise MalformedError("receipt.served_at_ms", "is in the future beyond the allowed skew")
    if entry.served_at_ms < now_ms - config.max_age_ms:
        raise MalformedError("receipt.served_at_ms", "is older than the log accepts")
    record = keys.record(entry.edge, entry.key_id)
    if record is None:
        raise MalformedError("receipt.key_id", f"no edge key {entry.edge}+{entry.key_id}")
    return entry, (record.vkey, signed_message(entry), entry.signature)


def _check_all(
    items: Sequence[object], state: _State, now_ms: int
) -> tuple[list[dict[str, object] | None], list[tuple[int, Receipt, SignedItem]]]:
    results: list[dict[str, object] | None] = [None] * len(items)
    unverified: list[tuple[int, Receipt, SignedItem]] = []
    keys = _Keys(state.storage)
    for i, item in enumerate(items):
        try:
            unverified.append((i, *_check(item, state, now_ms, keys)))
        except MalformedError as exc:
            results[i] = _rejected(exc.field, exc.reason)
    return results, unverified


async def _validate_all(
    items: Sequence[object], state: _State, now_ms: int
) -> tuple[list[dict[str, object] | None], list[tuple[int, Receipt]]]:
    """Every check of every submitted receipt: a result for each rejected one, and the
    valid ones with their positions. The signatures are checked last, in one batch, by the
    signature checker (in a worker process by default)."""
    results, unverified = await _on_work_thread(state, _check_all, items, state, now_ms)
    problems = await state.signatures.check([signed for _, _, signed in unverified])
    valid: list[tuple[int, Receipt]] = []
    for (position, receipt, _), problem in zip(unverified, problems, strict=True):
        if problem is None:
            valid.append((position, receipt))
        else:
            results[position] = _rejected("receipt.signature", problem)
    return results, valid


def _bundle(
    state: _State,
    index: int,
    data: bytes,
    checkpoint: StoredCheckpoint,
    proof: Sequence[bytes] | None = None,
) -> str:
    if proof is None:
        proof = inclusion_proof(index, checkpoint.tree_size, state.storage)
    bundle = ProofBundle(index, tuple(proof), checkpoint.note, extra=data)
    return format_bundle(bundle).decode()


def _answers(
    state: _State, outcomes: Sequence[object], checkpoint: StoredCheckpoint
) -> list[dict[str, object]]:
    answers: list[dict[str, object]] = []
    indexes = [o.index for o in outcomes if isinstance(o, Logged)]
    proofs = iter(inclusion_proofs(indexes, checkpoint.tree_size, state.storage))
    for outcome in outcomes:
        if isinstance(outcome, Logged):
            proof = next(proofs)
            answers.append(
                {
                    "status": "duplicate" if outcome.duplicate else "logged",
                    "index": outcome.index,
                    "bundle": _bundle(state, outcome.index, outcome.data, checkpoint, proof),
                }
            )
        elif isinstance(outcome, Conflict):
            answers.append(
                {
                    "status": "conflict",
                    "index": outcome.index,
                    "error": {
                        "field": "receipt.request_id",
                        "reason": "already logged with different content",
                    },
                }
            )
        elif isinstance(outcome, Rejected):
            answers.append(
                {"status": "rejected", "error": {"field": outcome.field, "reason": outcome.reason}}
            )
    return answers


async def submit_receipts(request: Request) -> Response:
    """Validate a batch, pool the valid receipts, and answer after the seal that logs them.

    200 with one result per receipt, in order; 422 (same body) when every receipt was
    rejected; 400/413 when the batch itself cannot be read; 503 when the log is overloaded;
    429 when an edge of the batch is over its budget (nothing is pooled).
    """
    state = _state(request)
    config = state.config
    body = await _read_body(request, config.max_body_bytes)
    items = _parse_batch(body, request.headers.get("content-type", ""), config.max_batch_receipts)
    count = len(items)
    if state.in_flight + count > config.max_pending:
        raise OverloadedError(f"{state.in_flight} receipts are already being checked or logged")
    state.in_flight += count
    try:
        results, valid = await _validate_all(items, state, _now_ms())
        del body, items  # only the checked receipts wait for the seal
        if valid:
            edges = [receipt.edge for _, receipt in valid]
            _admit(state.budgets.receipts, Counter(edges), "receipt.edge", "receipts")
            outcomes, checkpoint = await state.pool.submit([receipt for _, receipt in valid])
            appended = [isinstance(o, Logged) and not o.duplicate for o in outcomes]
            _charge(state.budgets.receipts, edges, appended)
            answers = await _on_work_thread(state, _answers, state, outcomes, checkpoint)
            for (position, _), answer in zip(valid, answers, strict=True):
                results[position] = answer
    finally:
        state.in_flight -= count
    for result in results:
        if result is not None:
            state.metrics.submissions.labels(outcome=str(result["status"])).inc()
    accepted = any(r is not None and r["status"] in ("logged", "duplicate") for r in results)
    return _JSON({"results": results}, status_code=200 if accepted else 422)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _authorize(request: Request, state: _State) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = state.keys.operator_token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
        raise HTTPException(401, "a valid operator bearer token is required")


_EDGE_KEY_FIELDS = {
    "action": str,
    "edge": str,
    "key": str,
    "valid_from_ms": int,
    "valid_until_ms": int,
    "replaces": str,
}


async def admin_edge_key(request: Request) -> Response:
    """Register, rotate or revoke an edge key: an ``edge_key`` entry signed by the operator."""
    state = _state(request)
    _authorize(request, state)
    obj = json.loads(await _read_body(request, 64 << 10), parse_float=_reject_float)
    if not isinstance(obj, dict):
        raise MalformedError("body", "not a JSON object")
    for name, value in obj.items():
        kind = _EDGE_KEY_FIELDS.get(name)
        if kind is None:
            raise MalformedError(f"edge_key.{name}", "unknown field")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise MalformedError(f"edge_key.{name}", f"{value!r} is not {kind.__name__}")
    for name in ("action", "edge", "key", "valid_from_ms"):
        if name not in obj:
            raise MalformedError(f"edge_key.{name}", "missing")
    signed = sign_edge_key(EdgeKey(**obj), state.keys.operator_key)
    outcomes, checkpoint = await state.pool.submit([signed])
    (answer,) = await _on_work_thread(state, _answers, state, outcomes, checkpoint)
    # Refused against the registry as it stands (e.g. revoking an unknown key): 409.
    return _JSON(answer, status_code=409 if answer["status"] == "rejected" else 200)


# -- the catalog and billing: creators, manifests, statements, disputes, revenue -----------
# Each request becomes one entry (a batch of statements, several), logged through the pool
# like any other; the rules the sequencer applies are log_server.catalog's.


def _status_of(answer: Mapping[str, object]) -> int:
    """200 logged or duplicate; 403 a signature the log cannot accept; 409 refused by the
    registries as they stand (an unknown creator, a run that does not chain, ...)."""
    if answer["status"] in ("logged", "duplicate"):
        return 200
    error = answer.get("error")
    field = error.get("field", "") if isinstance(error, dict) else ""
    return 403 if str(field).endswith(".signature") else 409


async def _log_entries(state: _State, entries: list[Entry]) -> list[dict[str, object]]:
    outcomes, checkpoint = await state.pool.submit(entries)
    answers: list[dict[str, object]] = await _on_work_thread(
        state, _answers, state, outcomes, checkpoint
    )
    return answers


async def _log_one(state: _State, entry: Entry) -> Response:
    (answer,) = await _log_entries(state, [entry])
    return _JSON(answer, status_code=_status_of(answer))


async def _log_charged(
    state: _State, entries: list[Manifest | Dispute | Statement], budgets: Budgets, field: str
) -> list[dict[str, object]]:
    """Log signed entries of a route without a token under their signers' budgets: admitted
    by the budgets of the signers whose signatures verify (429 naming ``field`` when one is
    over it; nothing is pooled then), and charged for what the seal appended."""
    signers = await asyncio.to_thread(lambda: [verified_signer(state.storage, e) for e in entries])
    _admit(budgets, Counter(s for s in signers if s is not None), field, "entries")
    answers = await _log_entries(state, list(entries))
    appended = [answer["status"] == "logged" for answer in answers]
    _charge(budgets, [_signer_of(e) for e in entries], appended)
    return answers


def _signer_of(entry: Manifest | Dispute | Statement) -> str:
    """Whose budget an appended entry spends (the log verified its signature)."""
    return entry.billing_key if isinstance(entry, Statement) else entry.creator_id


async def _json_body(request: Request) -> object:
    body = await _read_body(request, 64 << 10)
    return json.loads(body, parse_float=_reject_float, parse_constant=_reject_float)


def _signed_entry(item: object, kind: type[_E]) -> _E:
    """A signed entry as submitted (its canonical bytes, or a JSON object), checked to be a
    ``kind`` the log has not stamped yet."""
    entry = decode_entry(item if isinstance(item, bytes) else canonical_json(item))
    if not isinstance(entry, kind):
        raise MalformedError(f"{kind.kind}.kind", f"only {kind.kind} entries may be sent here")
    if entry.logged_at_ms is not None:
        raise MalformedError(f"{kind.kind}.logged_at_ms", "is set by the log")
    return entry


async def admin_creator(request: Request) -> Response:
    """Register a creator (or rotate its key, or change its currency): a ``creator`` entry
    signed by the operator key, which ``follows`` the registration in force (unless the
    body names the one it means to replace)."""
    state = _state(request)
    _authorize(request, state)
    fields = admin_fields(
        await _json_body(request), "creator",
        {"creator_id": str, "key": str, "currency": str, "follows": int},
        ("creator_id", "key", "currency"),
    )  # fmt: skip
    if "follows" not in fields:
        current = await asyncio.to_thread(state.storage.billing.creator, str(fields["creator_id"]))
        fields["follows"] = None if current is None else current.entry_index
    entry = sign_creator(Creator(**fields), state.keys.operator_key)  # type: ignore[arg-type]
    return await _log_one(state, entry)


async def submit_manifest(request: Request) -> Response:
    """A creator-signed ``manifest`` entry (publish or withdraw); no token: the signature by
    the creator's registered key is the authority."""
    state = _state(request)
    entry = _signed_entry(await _json_body(request), Manifest)
    (answer,) = await _log_charged(state, [entry], state.budgets.creators, "manifest.creator_id")
    return _JSON(answer, status_code=_status_of(answer))


async def submit_dispute(request: Request) -> Response:
    """A creator-signed ``dispute`` entry: open one, or withdraw it (close, by the creator)."""
    state = _state(request)
    entry = _signed_entry(await _json_body(request), Dispute)
    if entry.by != "creator":
        raise MalformedError("dispute.by", "the operator resolves disputes on the admin route")
    (answer,) = await _log_charged(state, [entry], state.budgets.creators, "dispute.creator_id")
    return _JSON(answer, status_code=_status_of(answer))


async def admin_resolve_dispute(request: Request) -> Response:
    """Close an open dispute as resolved: a ``dispute`` entry signed by the operator, which
    ``follows`` the line's latest open (unless the body names the open it closes). Sent
    again with the same reason, it is the same entry: ``duplicate``."""
    state = _state(request)
    _authorize(request, state)
    fields = admin_fields(
        await _json_body(request), "dispute",
        {"creator_id": str, "statement": str, "line": int, "reason": str, "follows": int},
        ("creator_id", "statement", "line", "reason"),
    )  # fmt: skip
    if "follows" not in fields:
        line = fields["line"]
        assert isinstance(line, int)  # noqa: S101 -- admin_fields checked it
        disputes = await asyncio.to_thread(
            state.storage.billing.disputes, statement=str(fields["statement"]), line=line
        )
        if not disputes:
            return _error(409, "dispute.line", "has no dispute to close")
        fields["follows"] = disputes[-1].opened_index
    dispute = Dispute(action="close", by="operator", **fields)  # type: ignore[arg-type]
    return await _log_one(state, sign_dispute(dispute, state.keys.operator_key))


async def admin_revenue(request: Request) -> Response:
    """Declare a buyer's revenue for a period: a ``revenue`` entry signed by the operator."""
    state = _state(request)
    _authorize(request, state)
    fields = admin_fields(
        await _json_body(request), "revenue",
        {"consumer_id": str, "currency": str, "amount_minor": int, "period_start_ms": int,
         "period_end_ms": int, "reference": str},
        ("consumer_id", "currency", "amount_minor", "period_start_ms", "period_end_ms",
         "reference"),
    )  # fmt: skip
    entry = sign_revenue(Revenue(**fields), state.keys.operator_key)  # type: ignore[arg-type]
    return await _log_one(state, entry)


async def submit_statements(request: Request) -> Response:
    """One billing run's ``statement`` entries (a JSON array, or JSON Lines), each signed by
    a billing key the log is configured with; logged in one seal. 200 when every one is
    logged (or was already), else 403/409 with one result per statement."""
    state = _state(request)
    if not state.billing_keys:
        raise HTTPException(403, "this log accepts no statements (it has no --billing-keys)")
    config = state.config
    body = await _read_body(request, config.max_body_bytes)
    items = _parse_batch(body, request.headers.get("content-type", ""), config.max_batch_receipts)
    entries: list[Manifest | Dispute | Statement] = []
    for item in items:
        entry = _signed_entry(item, Statement)
        if entry.billing_key not in state.billing_keys:
            raise HTTPException(403, f"{entry.billing_key} is not a billing key of this log")
        entries.append(entry)
    answers = await _log_charged(state, entries, state.budgets.statements, "statement.billing_key")
    status = max(_status_of(answer) for answer in answers)
    return _JSON({"results": answers}, status_code=status)


def _page(request: Request, state: _State) -> tuple[int, int]:
    after = _query_int(request, "after") if "after" in request.query_params else -1
    limit = _query_int(request, "limit", 100)
    if not 1 <= limit <= state.config.page_limit:
        raise MalformedError("limit", f"must be in 1..{state.config.page_limit}")
    return after, limit


async def get_creators(request: Request) -> Response:
    records = await asyncio.to_thread(_state(request).storage.billing.creators)
    return _JSON({"creators": [creator_json(r) for r in records]})


async def get_creator(request: Request) -> Response:
    creator_id = str(query_text(request.path_params["creator_id"], "creator_id"))
    record = await asyncio.to_thread(_state(request).storage.billing.creator, creator_id)
    if record is None:
        raise HTTPException(404, f"no creator {creator_id}")
    return _JSON(creator_json(record))


async def get_catalog(request: Request) -> Response:
    """Published manifest versions in log order (``?creator=``, ``?content=``), each with
    its entry index and withdrawal; page with ``after`` (an entry index) and ``limit``."""
    state = _state(request)
    after, limit = _page(request, state)
    creator = query_text(request.query_params.get("creator"), "creator")
    content = query_text(request.query_params.get("content"), "content")
    records = await asyncio.to_thread(
        lambda: state.storage.billing.manifests(
            creator_id=creator,
            content_id=content,
            after=after,
            limit=limit,
        )
    )
    next_after = records[-1].entry_index if len(records) == limit else None
    return _JSON({"manifests": [manifest_json(r) for r in records], "next_after": next_after})


async def get_statements(request: Request) -> Response:
    """Logged statements in log order (``?currency=``, ``?creator=``; ``latest=1``: newest
    first), paged by ``after`` (an entry index) and ``limit``."""
    state = _state(request)
    after, limit = _page(request, state)
    latest = request.query_params.get("latest", "0")
    if latest not in ("0", "1"):
        raise MalformedError("latest", "must be 0 or 1")
    currency = query_text(request.query_params.get("currency"), "currency")
    creator = query_text(request.query_params.get("creator"), "creator")
    records = await asyncio.to_thread(
        lambda: state.storage.billing.statements(
            currency,
            creator,
            after=after,
            limit=limit,
            latest=latest == "1",
        )
    )
    more = len(records) == limit and latest == "0"
    return _JSON(
        {
            "statements": [statement_json(r) for r in records],
            "next_after": records[-1].entry_index if more else None,
        }
    )


async def get_statement(request: Request) -> Response:
    digest = str(query_text(request.path_params["digest"], "digest"))
    record = await asyncio.to_thread(_state(request).storage.billing.statement, digest)
    if record is None:
        raise HTTPException(404, f"no statement {digest} in the log")
    return _JSON(statement_json(record))


async def get_disputes(request: Request) -> Response:
    """Disputes in log order (``?creator=``, ``?statement=``; ``open=1``: open ones only)."""
    state = _state(request)
    open_only = request.query_params.get("open", "0")
    if open_only not in ("0", "1"):
        raise MalformedError("open", "must be 0 or 1")
    creator = query_text(request.query_params.get("creator"), "creator")
    statement = query_text(request.query_params.get("statement"), "statement")
    records = await asyncio.to_thread(
        lambda: state.storage.billing.disputes(
            creator, open_only=open_only == "1", statement=statement
        )
    )
    return _JSON({"disputes": [dispute_json(r) for r in records]})


async def get_revenue(request: Request) -> Response:
    consumer = query_text(request.query_params.get("consumer"), "consumer")
    if consumer is None:
        raise MalformedError("consumer", "missing")
    records = await asyncio.to_thread(_state(request).storage.billing.revenue, consumer)
    return _JSON({"revenue": [revenue_json(r) for r in records]})


async def get_billing_keys(request: Request) -> Response:
    return _JSON({"billing_keys": sorted(_state(request).billing_keys)})


# -- what the portal reads: statement documents, their lines' receipts, provisional usage,
# -- a job's bundles in one download ----------------------------------------------------------


async def _logged_statement(state: _State, digest_text: str) -> str:
    """The digest from a path, if the log has logged that statement (else 404)."""
    digest = str(query_text(digest_text, "digest"))
    if await asyncio.to_thread(state.storage.billing.statement, digest) is None:
        raise HTTPException(404, f"no statement {digest} in the log")
    return digest


async def get_statement_document(request: Request) -> Response:
    """The document of a logged statement (its canonical bytes, whose SHA-256 is the digest),
    from the billing runs' directory the log serves (--statements); 404 if it has none."""
    state = _state(request)
    digest = await _logged_statement(state, request.path_params["digest"])
    documents = state.documents
    data = None if documents is None else await asyncio.to_thread(documents.read, digest)
    if data is None:
        raise HTTPException(404, f"the log has no document for statement {digest}")
    return Response(data, media_type="application/json", headers={"Cache-Control": _IMMUTABLE})


async def get_line_receipts(request: Request) -> Response:
    """The receipts a statement line counts, by the leaf indices it names, in index order,
    each with a proof bundle under the latest checkpoint; paged by ``after`` and ``limit``."""
    state = _state(request)
    digest = await _logged_statement(state, request.path_params["digest"])
    line = parse_decimal(request.path_params["line"], "line")
    after, limit = _page(request, state)
    documents = state.documents
    lines = None if documents is None else await asyncio.to_thread(documents.lines, digest)
    if lines is None:
        raise HTTPException(404, f"the log has no document for statement {digest}")
    if not 1 <= line <= len(lines):
        raise HTTPException(404, f"statement {digest} has no line {line}")
    indices = lines[line - 1]
    start = bisect.bisect_right(indices, after)
    page = indices[start : start + limit]
    checkpoint = await _latest(state)
    records = await asyncio.to_thread(state.storage.entries_at, page)
    bundles = await asyncio.to_thread(_bundles, state, records, checkpoint)
    more = start + limit < len(indices)
    return _JSON(
        {
            "statement": digest,
            "line": line,
            "leaf_count": len(indices),
            "receipts": bundles,
            "next_after": page[-1] if more and page else None,
        }
    )


async def _latest(state: _State) -> StoredCheckpoint:
    checkpoint = await asyncio.to_thread(state.storage.latest_checkpoint)
    if checkpoint is None:
        raise HTTPException(503, "no checkpoint yet")
    return checkpoint


def _bundles(
    state: _State, records: Sequence[EntryRecord], checkpoint: StoredCheckpoint
) -> list[dict[str, object]]:
    """``{"index", "bundle"}`` of each record under ``checkpoint``, the proofs read at once."""
    under = [r for r in records if r.index < checkpoint.tree_size]
    proofs = inclusion_proofs([r.index for r in under], checkpoint.tree_size, state.storage)
    return [
        {"index": r.index, "bundle": _bundle(state, r.index, r.data, checkpoint, proof)}
        for r, proof in zip(under, proofs, strict=True)
    ]


async def get_provisional(request: Request) -> Response:
    """A creator's accrued-but-unbilled usage: the receipts naming it logged from where its
    currency's last billing run ended (where the next run starts) up to the latest
    checkpoint. Provisional: a run may still exclude some of them, and prices none here."""
    state = _state(request)
    creator_id = str(query_text(request.path_params["creator_id"], "creator_id"))
    billing = state.storage.billing
    creator = await asyncio.to_thread(billing.creator, creator_id)
    if creator is None:
        raise HTTPException(404, f"no creator {creator_id}")
    latest = await asyncio.to_thread(
        lambda: billing.statements(creator.currency, latest=True, limit=1)
    )
    since = latest[0].range_end if latest else 0
    checkpoint = await _latest(state)
    count = await asyncio.to_thread(state.storage.count_entries, "creator_id", creator_id, since)
    return _JSON(
        {
            "creator_id": creator_id,
            "currency": creator.currency,
            "provisional": True,
            "from_index": since,
            "after_statement": latest[0].digest if latest else None,
            "tree_size": checkpoint.tree_size,
            "receipts": count,
        }
    )


class _ZipSink:
    """A write-only file for zipfile that hands out what was written since the last take."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


_ZIP_PAGE = 500
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")


async def get_receipts_zip(request: Request) -> Response:
    """Every receipt of a job (or consumer, creator, content) as one zip of .tlog-proof
    files, ``receipt-<index>.tlog-proof`` as ``meterlog receipts get`` names them, all under
    the latest checkpoint; streamed page by page, so its size is not held in memory."""
    state = _state(request)
    given = [(n, request.query_params[n]) for n in _FINDERS if n in request.query_params]
    if len(given) != 1:
        raise MalformedError("query", f"give exactly one of {', '.join(_FINDERS)}")
    name, value = given[0]
    query_text(value, name)
    column = _FINDERS[name]
    checkpoint = await _latest(state)
    find = state.storage.find_entries
    first = await asyncio.to_thread(find, column, value, -1, _ZIP_PAGE)
    if not first or first[0].index >= checkpoint.tree_size:
        raise HTTPException(404, f"no receipts with {name} {value}")

    async def chunks() -> AsyncIterator[bytes]:
        sink = _ZipSink()
        page = first
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
            while page:
                bundles = await asyncio.to_thread(_bundles, state, page, checkpoint)
                for item in bundles:
                    archive.writestr(f"receipt-{item['index']}.tlog-proof", str(item["bundle"]))
                yield sink.take()
                if len(page) < _ZIP_PAGE or page[-1].index >= checkpoint.tree_size:
                    break
                page = await asyncio.to_thread(find, column, value, page[-1].index, _ZIP_PAGE)
        yield sink.take()

    filename = f"receipts-{name}-{_UNSAFE_IN_NAME.sub('_', value)[:80]}.zip"
    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# -- reading ------------------------------------------------------------------------------


async def get_checkpoint(request: Request) -> Response:
    state = _state(request)
    if state.witnessing is not None:
        # With witnesses: their cosignatures merged in, and the quorum's checkpoint only.
        note = await asyncio.to_thread(state.witnessing.served)
        if note is None:
            raise HTTPException(503, "no checkpoint has the witness quorum yet")
    else:
        latest = await asyncio.to_thread(state.storage.latest_checkpoint)
        if latest is None:
            raise HTTPException(503, "the log has not signed a checkpoint yet")
        note = latest.note
    return Response(
        note,
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": _SHORT},
    )


async def get_tile(request: Request) -> Response:
    state = _state(request)
    tile = parse_tile_path("tile/" + request.path_params["path"])
    size = await asyncio.to_thread(state.storage.tree_size)
    level = 0 if tile.level == ENTRIES else tile.level
    available = (size >> (TILE_HEIGHT * level)) - tile.n * TILE_WIDTH
    if available < tile.width:
        raise HTTPException(404, f"{tile.path()} is not in the tree of size {size}")
    if tile.level == ENTRIES:
        start = tile.n * TILE_WIDTH
        entries = await asyncio.to_thread(state.storage.entry_data, start, start + tile.width)
        data = encode_entry_bundle(entries)
    else:
        hashes = await asyncio.to_thread(state.storage.read_hashes, tile_hash_indexes(tile))
        data = b"".join(hashes)
    cache = _SHORT if tile.is_partial else _IMMUTABLE
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": cache})


def _query_int(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None:
        if default is None:
            raise MalformedError(name, "missing")
        return default
    return parse_decimal(text, name)


async def get_inclusion(request: Request) -> Response:
    state = _state(request)
    size = await asyncio.to_thread(state.storage.tree_size)
    tree_size = _query_int(request, "tree_size", size)
    if not 0 < tree_size <= size:
        raise MalformedError("tree_size", f"{tree_size} is not in 1..{size}")
    if "leaf_hash" in request.query_params:
        if "index" in request.query_params:
            raise MalformedError("query", "give index or leaf_hash, not both")
        leaf = decode_b64(request.query_params["leaf_hash"], "leaf_hash")
        found = await asyncio.to_thread(state.storage.index_of_leaf, leaf)
        if found is None:
            raise HTTPException(404, "no entry has that leaf_hash")
        index = found
    else:
        index = _query_int(request, "index")
    if index >= tree_size:
        raise MalformedError("index", f"{index} is not below tree_size {tree_size}")
    proof = await asyncio.to_thread(inclusion_proof, index, tree_size, state.storage)
    return _JSON({"index": index, "tree_size": tree_size, "proof": [encode_b64(h) for h in proof]})


async def get_consistency(request: Request) -> Response:
    state = _state(request)
    size = await asyncio.to_thread(state.storage.tree_size)
    old_size = _query_int(request, "old_size")
    new_size = _query_int(request, "new_size", size)
    if new_size > size:
        raise MalformedError("new_size", f"{new_size} is larger than the tree ({size})")
    if old_size > new_size:
        raise MalformedError("old_size", f"{old_size} is larger than new_size {new_size}")
    proof = await asyncio.to_thread(consistency_proof, old_size, new_size, state.storage)
    return _JSON(
        {"old_size": old_size, "new_size": new_size, "proof": [encode_b64(h) for h in proof]}
    )


async def get_entries(request: Request) -> Response:
    state = _state(request)
    start = _query_int(request, "start", 0)
    # The default end must stay a 64-bit database integer, even for a start near 2**63.
    end = _query_int(request, "end", min(start + state.config.page_limit, MAX_INT63))
    if end < start or end - start > state.config.page_limit:
        raise MalformedError("end", f"must be in start..start+{state.config.page_limit}")
    records = await asyncio.to_thread(state.storage.entries, start, end)
    return _JSON({"entries": [{"index": r.index, "entry": r.data.decode()} for r in records]})


async def get_receipt(request: Request) -> Response:
    state = _state(request)
    key = (request.path_params["edge"], request.path_params["request_id"])
    found = await asyncio.to_thread(state.storage.receipts, [key])
    record = found.get(key)
    if record is None:
        raise HTTPException(404, "no receipt with that edge and request_id")
    checkpoint = await asyncio.to_thread(state.storage.latest_checkpoint)
    if checkpoint is None:
        raise HTTPException(503, "no checkpoint yet")
    bundle = await asyncio.to_thread(_bundle, state, record.index, record.data, checkpoint)
    return _JSON({"index": record.index, "bundle": bundle})


_FINDERS = {
    "request": "request_id",
    "consumer": "consumer_id",
    "job": "job_id",
    "creator": "creator_id",
    "content": "content_id",
}


async def find_receipts(request: Request) -> Response:
    """Receipts by request id (from any edge), consumer, job, creator or content, in index
    order, with proof bundles.

    Page with ``after`` (the last index seen) and ``limit``; ``next_after`` is null at the end.
    """
    state = _state(request)
    given = [
        (name, request.query_params[name]) for name in _FINDERS if name in request.query_params
    ]
    if len(given) != 1:
        raise MalformedError("query", f"give exactly one of {', '.join(_FINDERS)}")
    name, value = given[0]
    after = _query_int(request, "after") if "after" in request.query_params else -1
    limit = _query_int(request, "limit", 100)
    if not 1 <= limit <= state.config.page_limit:
        raise MalformedError("limit", f"must be in 1..{state.config.page_limit}")
    if name == "request":
        records = await asyncio.to_thread(state.storage.find_by_request_id, value, after, limit)
    else:
        records = await asyncio.to_thread(
            state.storage.find_entries, _FINDERS[name], value, after, limit
        )
    checkpoint = await asyncio.to_thread(state.storage.latest_checkpoint)
    if checkpoint is None:
        raise HTTPException(503, "no checkpoint yet")
    receipts = [
        {
            "index": r.index,
            "bundle": await asyncio.to_thread(_bundle, state, r.index, r.data, checkpoint),
        }
        for r in records
        if r.index < checkpoint.tree_size
    ]
    next_after = records[-1].index if len(records) == limit else None
    return _JSON({"receipts": receipts, "next_after": next_after})


def _order(request: Request) -> tuple[bool, int | None]:
    """How a history (checkpoints, anchors) is paged: oldest first after the id ``after``
    (the default), or with ``order=desc`` newest first below the id ``before`` (none: the
    latest page). (newest first?, the cursor given, if any.)"""
    order = request.query_params.get("order", "asc")
    if order == "asc":
        if "before" in request.query_params:
            raise MalformedError("before", "pages newest first only: give order=desc")
        return False, _query_int(request, "after") if "after" in request.query_params else None
    if order == "desc":
        if "after" in request.query_params:
            raise MalformedError("after", "pages oldest first only: leave out order=desc")
        return True, _query_int(request, "before") if "before" in request.query_params else None
    raise MalformedError("order", "not one of asc, desc")


async def get_checkpoints(request: Request) -> Response:
    """The history of published checkpoints, oldest first, paged by ``after`` (an id); with
    ``order=desc``, newest first, paged by ``before`` (an id)."""
    state = _state(request)
    limit = _query_int(request, "limit", 100)
    if not 1 <= limit <= state.config.page_limit:
        raise MalformedError("limit", f"must be in 1..{state.config.page_limit}")
    newest_first, cursor = _order(request)
    if newest_first:
        rows = await asyncio.to_thread(state.storage.checkpoints_newest_first, cursor, limit)
    else:
        rows = await asyncio.to_thread(state.storage.checkpoints, cursor or 0, limit)
    return _JSON(
        {
            "checkpoints": [
                {
                    "id": row_id,
                    "tree_size": c.tree_size,
                    "root_hash": encode_b64(c.root_hash),
                    "signed_at_ms": c.signed_at_ms,
                    "checkpoint": c.note.decode(),
                }
                for row_id, c in rows
            ]
        }
    )


_GROWTH_POINTS = 1000


async def get_growth(request: Request) -> Response:
    """The tree size over time: about ``points`` checkpoints spread evenly over the whole
    history (the first and the latest included), for the portal's growth chart. Only sizes
    and times: the signed notes are in /v1/checkpoints."""
    points = _query_int(request, "points", 100)
    if not 2 <= points <= _GROWTH_POINTS:
        raise MalformedError("points", f"must be in 2..{_GROWTH_POINTS}")
    samples = await asyncio.to_thread(_state(request).storage.checkpoint_growth, points)
    return _JSON(
        {
            "points": [
                {"id": row_id, "tree_size": size, "signed_at_ms": signed_at_ms}
                for row_id, size, signed_at_ms in samples
            ]
        }
    )


async def get_log(request: Request) -> Response:
    """Who the log says it is: its origin, its verifier key and the witnesses it submits to.

    A convenience for the portal and for people, not a root of trust: a verifier that takes
    the key from the server it checks has checked only that the server is self-consistent.
    Pin the key (log.vkey) to check more; the portal says which one it used. Each witness
    comes with the largest size it has cosigned (stored), and ``witness_refusals`` counts the
    witnesses' refusals since this process started: a witness refuses a checkpoint that is
    not consistent with one it cosigned, so any refusal means a fork or a log that lost data.
    """
    state = _state(request)
    witnessing = state.witnessing
    witnesses: list[dict[str, object]] = []
    quorum = None
    refusals = 0
    if witnessing is not None:
        for w in witnessing.policy.witnesses:
            cosigned = await asyncio.to_thread(state.storage.cosigned_size, witness_id(w))
            witnesses.append(
                {
                    "name": w.name,
                    "key": format_vkey(w.key),
                    "url": w.url or "",
                    "cosigned_size": cosigned,
                }
            )
        quorum = witnessing.policy.describe_quorum()
        refusals = witnessing.outcomes.get("refused", 0)
    return _JSON(
        {
            "origin": state.config.origin,
            "log_key": format_vkey(state.keys.log_key.verifier()),
            "witnesses": witnesses,
            "quorum": quorum,
            "witness_refusals": refusals,
        }
    )


async def get_checkpoint_at(request: Request) -> Response:
    """The latest signed checkpoint of exactly one tree size (a past one, for verifiers)."""
    tree_size = parse_decimal(request.path_params["tree_size"], "tree_size")
    found = await asyncio.to_thread(_state(request).storage.checkpoint_at, tree_size)
    if found is None:
        raise HTTPException(404, f"no checkpoint of size {tree_size}")
    return Response(found.note, media_type="text/plain; charset=utf-8")


async def get_edge_keys(request: Request) -> Response:
    records = await asyncio.to_thread(_state(request).storage.edge_keys)
    return _JSON(
        {
            "edge_keys": [
                {
                    "edge": r.edge,
                    "key_id": r.key_id,
                    "key": r.vkey,
                    "valid_from_ms": r.valid_from_ms,
                    "valid_until_ms": r.valid_until_ms,
                    "entry_index": r.entry_index,
                }
                for r in records
            ]
        }
    )


async def healthz(request: Request) -> Response:
    state = _state(request)
    latest = await asyncio.to_thread(state.storage.latest_checkpoint)
    body: dict[str, object] = {
        "ok": latest is not None,
        "tree_size": 0 if latest is None else latest.tree_size,
        "checkpoint_age_ms": None if latest is None else _now_ms() - latest.signed_at_ms,
        "pending": state.pool.pending,
    }
    if state.anchoring is not None:
        tree_size = 0 if latest is None else latest.tree_size
        body["anchor"] = await asyncio.to_thread(state.anchoring.status, tree_size, _now_ms())
    return _JSON(body)


async def get_anchors(request: Request) -> Response:
    """The anchors the log sent, oldest first (paged by ``after``, an id) or with
    ``order=desc`` newest first (paged by ``before``); ``status`` picks one status; and where
    it anchors: ``anchoring`` is null when it does not."""
    from log_server.anchoring import ANCHOR_STATUSES, anchor_json  # noqa: PLC0415

    state = _state(request)
    limit = _query_int(request, "limit", 100)
    if not 1 <= limit <= state.config.page_limit:
        raise MalformedError("limit", f"must be in 1..{state.config.page_limit}")
    status = request.query_params.get("status")
    if status is not None and status not in ANCHOR_STATUSES:
        raise MalformedError("status", f"not one of {', '.join(ANCHOR_STATUSES)}")
    statuses = () if status is None else (status,)
    newest_first, cursor = _order(request)
    if newest_first:
        anchors = await asyncio.to_thread(
            state.storage.anchors.list_newest_first, cursor, limit, statuses
        )
    else:
        anchors = await asyncio.to_thread(state.storage.anchors.list, cursor or 0, limit, statuses)
    anchoring = None if state.anchoring is None else state.anchoring.describe()
    return _JSON(
        {
            "anchoring": anchoring,
            "anchors": [anchor_json(a) for a in anchors],
            "next_before" if newest_first else "next_after": (
                anchors[-1].id if len(anchors) == limit else None
            ),
        }
    )


async def get_metrics(request: Request) -> Response:
    state = _state(request)
    state.metrics.pool_size.set(state.pool.pending)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


async def get_openapi(request: Request) -> Response:
    return _JSON(OPENAPI)


# -- errors, in one place ---------------------------------------------------------------


async def _malformed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MalformedError)  # noqa: S101 -- registered for this type only
    return _error(400, exc.field, exc.reason)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101
    return _error(exc.status_code, "request", str(exc.detail))


async def _over_budget(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _OverBudgetError)  # noqa: S101
    response = _error(429, exc.field, exc.reason)
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _overloaded(request: Request, exc: Exception) -> Response:
    response = _error(503, "log", str(exc))
    response.headers["Retry-After"] = "1"
    return response


async def _bad_json(request: Request, exc: Exception) -> Response:
    return _error(400, "body", f"not valid JSON or UTF-8: {exc}")


async def _start_anchoring(
    config: Config, storage: Storage, thread: ThreadPoolExecutor
) -> Anchoring | None:
    """The anchoring job if --anchor-rpc is set, checked against the chain on ``thread``:
    a wrong chain or contract raises, and the app does not start."""
    if config.anchor_rpc is None:
        return None
    from log_server.anchoring import Anchoring  # noqa: PLC0415 -- web3 only when anchoring

    anchoring = Anchoring(config, storage, config.origin)
    await asyncio.get_running_loop().run_in_executor(thread, anchoring.start)
    return anchoring


def _schedule_anchoring(
    anchoring: Anchoring,
    config: Config,
    scheduler: AsyncIOScheduler,
    thread: ThreadPoolExecutor,
) -> None:
    """``anchor_due`` every ``anchor_interval_s`` (the first at once) and ``follow`` every
    poll interval, both on ``thread``, so one at a time and never on the event loop."""
    loop = asyncio.get_running_loop()

    async def anchor_due() -> None:
        await loop.run_in_executor(thread, lambda: anchoring.anchor_due(_now_ms()))

    async def follow() -> None:
        await loop.run_in_executor(thread, lambda: anchoring.follow(_now_ms()))

    scheduler.add_job(
        anchor_due,
        "interval",
        seconds=config.anchor_interval_s,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        follow, "interval", seconds=anchoring.poll_interval_s, max_instances=1, coalesce=True
    )


def _witnessing(config: Config, storage: Storage) -> Witnessing | None:
    if config.witness_policy is None:
        return None
    policy = parse_policy(config.witness_policy.read_text(encoding="utf-8"))
    return Witnessing(storage, policy, _now_s, config.witness_timeout_s)


def _scheduler(
    config: Config,
    pool: Pool,
    witnessing: Witnessing | None,
    anchoring: Anchoring | None,
    anchor_thread: ThreadPoolExecutor,
) -> AsyncIOScheduler:
    """The log's jobs: seal the pool, re-sign when idle, witnesses, anchors."""
    scheduler = AsyncIOScheduler()
    scheduler.add_job(pool.seal, "interval", seconds=config.pool_interval_s, max_instances=1)
    scheduler.add_job(pool.resign, "interval", seconds=config.checkpoint_interval_s)
    if witnessing is not None:
        scheduler.add_job(
            witnessing.submit_latest, "interval", seconds=config.witness_interval_s,
            max_instances=1,
        )  # fmt: skip
    if anchoring is not None:
        _schedule_anchoring(anchoring, config, scheduler, anchor_thread)
    return scheduler


def create_app(config: Config) -> Starlette:
    """The log as a Starlette app; storage and the scheduler live for the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        keys = DataDir.prepare(config)
        storage = await asyncio.to_thread(Storage.open, config.db_url)
        log = LogIdentity(config.origin, keys.log_key)
        if await asyncio.to_thread(storage.latest_checkpoint) is None:
            await asyncio.to_thread(sequence, storage, log, [], _now_ms())
        anchor_thread = ThreadPoolExecutor(1, thread_name_prefix="meterlog-anchor")
        try:
            anchoring = await _start_anchoring(config, storage, anchor_thread)
        except BaseException:  # a wrong chain or contract: the log does not start
            anchor_thread.shutdown(wait=True)
            storage.close()
            raise
        metrics = Metrics()

        def sealed(seconds: float, checkpoint: StoredCheckpoint) -> None:
            metrics.sequencing_seconds.observe(seconds)
            metrics.tree_size.set(checkpoint.tree_size)

        pool = Pool(
            storage, log, _now_ms, config.pool_max_entries, config.max_pending, on_sealed=sealed
        )
        work = ThreadPoolExecutor(1, thread_name_prefix="meterlog-work")
        signatures = SignatureChecker(config.verify_processes, work)
        witnessing = _witnessing(config, storage)
        billing_keys = (
            frozenset() if config.billing_keys is None else read_billing_keys(config.billing_keys)
        )
        documents = (
            None if config.statements_dir is None else StatementDocuments(config.statements_dir)
        )
        app.state.log = _State(
            config,
            storage,
            pool,
            keys,
            metrics,
            work,
            signatures,
            _SignerBudgets.of(config),
            witnessing=witnessing,
            anchoring=anchoring,
            billing_keys=billing_keys,
            documents=documents,
        )
        scheduler = _scheduler(config, pool, witnessing, anchoring, anchor_thread)
        scheduler.start()
        try:
            yield
        finally:
            # No new jobs; then the pool's lock waits out any seal in flight and logs the rest.
            scheduler.pause()
            await pool.seal()
            scheduler.shutdown(wait=False)
            if witnessing is not None:
                await witnessing.aclose()
            anchor_thread.shutdown(wait=True, cancel_futures=True)
            if anchoring is not None:
                await asyncio.to_thread(anchoring.close)
            pool.close()
            signatures.close()
            work.shutdown(wait=True)
            storage.close()

    routes = [
        Route("/checkpoint", get_checkpoint, methods=["GET"]),
        Route("/tile/{path:path}", get_tile, methods=["GET"]),
        Route("/v1/receipts", submit_receipts, methods=["POST"]),
        Route("/v1/receipts", find_receipts, methods=["GET"]),
        Route("/v1/receipts/{edge}/{request_id}", get_receipt, methods=["GET"]),
        Route("/v1/log", get_log, methods=["GET"]),
        Route("/v1/growth", get_growth, methods=["GET"]),
        Route("/v1/checkpoints", get_checkpoints, methods=["GET"]),
        Route("/v1/checkpoints/{tree_size}", get_checkpoint_at, methods=["GET"]),
        Route("/v1/proofs/inclusion", get_inclusion, methods=["GET"]),
        Route("/v1/proofs/consistency", get_consistency, methods=["GET"]),
        Route("/v1/entries", get_entries, methods=["GET"]),
        Route("/v1/edge-keys", get_edge_keys, methods=["GET"]),
        Route("/v1/anchors", get_anchors, methods=["GET"]),
        Route("/v1/admin/edge-keys", admin_edge_key, methods=["POST"]),
        Route("/v1/admin/creators", admin_creator, methods=["POST"]),
        Route("/v1/admin/disputes", admin_resolve_dispute, methods=["POST"]),
        Route("/v1/admin/revenue", admin_revenue, methods=["POST"]),
        Route("/v1/manifests", submit_manifest, methods=["POST"]),
        Route("/v1/statements", submit_statements, methods=["POST"]),
        Route("/v1/disputes", submit_dispute, methods=["POST"]),
        Route("/v1/creators", get_creators, methods=["GET"]),
        Route("/v1/creators/{creator_id}", get_creator, methods=["GET"]),
        Route("/v1/catalog", get_catalog, methods=["GET"]),
        Route("/v1/statements", get_statements, methods=["GET"]),
        Route("/v1/statements/{digest}", get_statement, methods=["GET"]),
        Route("/v1/statements/{digest}/document", get_statement_document, methods=["GET"]),
        Route(
            "/v1/statements/{digest}/lines/{line}/receipts",
            get_line_receipts,
            methods=["GET"],
        ),
        Route("/v1/creators/{creator_id}/provisional", get_provisional, methods=["GET"]),
        Route("/v1/receipts.zip", get_receipts_zip, methods=["GET"]),
        Route("/v1/disputes", get_disputes, methods=["GET"]),
        Route("/v1/revenue", get_revenue, methods=["GET"]),
        Route("/v1/billing-keys", get_billing_keys, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
        portal_mount("/portal"),
    ]
    handlers = {
        MalformedError: _malformed,
        HTTPException: _http,
        OverloadedError: _overloaded,
        _OverBudgetError: _over_budget,
        json.JSONDecodeError: _bad_json,
        UnicodeDecodeError: _bad_json,
    }
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
