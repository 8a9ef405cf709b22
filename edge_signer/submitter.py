"""The submitter: drains the spool into the log, and keeps only proofs it verified.

Owns the edge's side of ``POST /v1/receipts``: batches of pending receipts (by count, bytes
and age), retries, and the checks every answer must pass before anything is stored. Imports
tlog, httpx and edge_signer.spool; must not import verifier, log_server, anchor, billing or
cli.

For each receipt the log answers ``logged`` or ``duplicate``, the bundle must verify: the
checkpoint signed by the configured log key (and origin), the inclusion proof at the index
the answer names, and the logged entry must be exactly the receipt sent plus the log's
``logged_at_ms``. Each new checkpoint must also be consistent with the last one this spool
verified (a consistency proof from the log's read API), so a log that shows this edge a
forked tree is caught; when the proof shows another root at the older size, that is a fork
proven (:class:`LogForkError`, with the evidence file), else just a bad proof. Only then
are the batch's answers stored, in one transaction. An answer that fails any check raises
:class:`LogMisbehaviourError` (a fork: :class:`LogForkError`): nothing of the batch is
stored, and the submitter stops; the receipts stay pending, and nothing is lost.

``rejected`` and ``conflict`` answers are stored as such, with the log's reason, and logged
loudly: the log refused those receipts (e.g. the edge key is not registered yet), and
``meterlog edge requeue`` sends them again once that is fixed.

Network errors, timeouts, 429 and 5xx answers are retried with exponential backoff and
jitter, honouring ``Retry-After``. Resubmission is idempotent: the spool sends the same
bytes, and the log deduplicates on (edge, request_id). A 413 halves the batch. Any other
4xx means the submitter is misconfigured (wrong URL, a proxy in the way):
:class:`LogRefusedError`, and it stops.

One submitter per spool: :func:`submitter_lock` holds an exclusive lock on the spool
directory (released by the kernel if the process dies).
"""

from __future__ import annotations

import dataclasses
import email.utils
import fcntl
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge_signer.spool import Answer, PendingReceipt, Spool, now_ms
from tlog.bundle import parse_bundle, verify_bundle_inclusion
from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.entry import Receipt, decode_entry, encode_entry
from tlog.errors import InconsistentLogError, MalformedError, VerificationError
from tlog.evidence import ForkEvidence, format_fork_evidence, verify_checkpoints_consistent
from tlog.note import Verifier
from tlog.parsing import decode_b64

__all__ = [
    "Backoff",
    "BatchOutcome",
    "LogForkError",
    "LogMisbehaviourError",
    "LogRefusedError",
    "LogUnavailableError",
    "SpoolBusyError",
    "Submitter",
    "SubmitterStats",
    "submitter_lock",
]

log = logging.getLogger("edge_signer.submitter")

SUBMIT_PATH = "/v1/receipts"
CONSISTENCY_PATH = "/v1/proofs/consistency"
USER_AGENT = "meterlog-edge"
CHECKPOINT_META = "checkpoint"
"""Spool meta key: the latest checkpoint note this spool verified."""
LOCK_NAME = "submitter.lock"


class LogUnavailableError(Exception):
    """The log did not answer (network, timeout) or answered 429/5xx: retry later.

    ``retry_after_s`` is the log's ``Retry-After``, when it sent one."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class LogRefusedError(Exception):
    """The log refused a batch for a reason retrying cannot fix (4xx other than 413/429)."""


class LogMisbehaviourError(Exception):
    """An answer of the log failed verification: the log (or something posing as it) lied.

    Nothing of the batch was stored; the submitter stops. ``request_id`` names the receipt
    whose answer failed, when one did."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        where = f"receipt {request_id}: " if request_id else ""
        super().__init__(f"the log misbehaved: {where}{reason}")
        self.reason = reason
        self.request_id = request_id


class LogForkError(LogMisbehaviourError):
    """Two checkpoints of the log with two roots for one size: a fork, proven.

    ``old_checkpoint`` and ``new_checkpoint`` are the two signed notes, ``evidence`` the fork
    evidence file (``tlog.evidence``) that ``meterlog verify evidence`` checks."""

    def __init__(
        self, reason: str, old_checkpoint: bytes, new_checkpoint: bytes, evidence: bytes
    ) -> None:
        super().__init__(reason)
        self.old_checkpoint = old_checkpoint
        self.new_checkpoint = new_checkpoint
        self.evidence = evidence


class SpoolBusyError(Exception):
    """Another submitter is draining this spool."""


@contextmanager
def submitter_lock(directory: Path) -> Iterator[None]:
    """Hold the spool's submitter lock for the ``with`` block; SpoolBusyError if taken."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SpoolBusyError(f"another submitter is draining the spool in {directory}") from exc
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with equal jitter: the n-th consecutive failure waits between
    half and all of ``min(maximum_s, initial_s * factor ** (n - 1))``."""

    initial_s: float = 0.5
    factor: float = 2.0
    maximum_s: float = 30.0

    def delay_s(self, failures: int, random_unit: float) -> float:
        """The wait after ``failures`` (>= 1) failures in a row; ``random_unit`` in [0, 1)."""
        ceiling = min(self.maximum_s, self.initial_s * self.factor ** max(0, failures - 1))
        return ceiling / 2 + ceiling / 2 * random_unit


@dataclass
class SubmitterStats:
    """Counts since the submitter started."""

    batches: int = 0
    logged: int = 0
    duplicate: int = 0
    rejected: int = 0
    conflict: int = 0
    retries: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One batch the log answered and the submitter verified and stored."""

    sent: int
    logged: int = 0
    duplicate: int = 0
    rejected: int = 0
    conflict: int = 0
    tree_size: int = 0


@dataclass
class _Checked:
    answers: list[Answer] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[bytes, SignedCheckpoint] = field(default_factory=dict)


def _retry_after_s(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_s)


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        value = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LogMisbehaviourError(
            f"HTTP {response.status_code} answer is not JSON: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise LogMisbehaviourError(f"HTTP {response.status_code} answer is not a JSON object")
    return value


def _error_text(result: dict[str, object]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return f"{error.get('field', '?')}: {error.get('reason', '?')}"
    return "no reason given"


class Submitter:
    """Submits the pending receipts of ``spool`` to the log at ``log_url``.

    ``client`` is the httpx client to use (tests give one with a fault-injecting transport);
    ``clock_ms``, ``random_unit`` and ``sleep`` (which returns True if the submitter should
    stop instead of going on) are parameters so tests never wait.
    """

    def __init__(
        self,
        spool: Spool,
        log_url: str,
        log_key: Verifier,
        *,
        origin: str | None = None,
        client: httpx.Client | None = None,
        batch_size: int = 256,
        max_batch_bytes: int = 4 << 20,
        batch_wait_s: float = 0.5,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        clock_ms: Callable[[], int] = now_ms,
        random_unit: Callable[[], float] = random.random,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.spool = spool
        self.log_url = log_url.rstrip("/")
        self.log_key = log_key
        self.origin = origin
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            headers={"User-Agent": USER_AGENT},
        )
        self._owns_client = client is None
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.batch_wait_s = batch_wait_s
        self.backoff = backoff or Backoff()
        self.clock_ms = clock_ms
        self.random_unit = random_unit
        self.stats = SubmitterStats()
        self._latest: SignedCheckpoint | None = None
        stored = spool.get_meta(CHECKPOINT_META)
        if stored is not None:
            self._latest = open_checkpoint(stored, [log_key], origin=origin)

    def close(self) -> None:
        """Close the HTTP client, if the submitter made it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one batch ----------------------------------------------------------------------------

    def submit_batch(self) -> BatchOutcome | None:
        """Send the oldest pending receipts as one batch; store the verified answers.

        None when nothing is pending. Raises LogUnavailableError (retry later),
        LogRefusedError or LogMisbehaviourError (stop); in each case nothing is stored.
        """
        batch = self.spool.pending(self.batch_size, self.max_batch_bytes)
        if not batch:
            return None
        self.spool.mark_sent([p.seq for p in batch])
        response = self._post(batch)
        if response.status_code == 413 and len(batch) > 1:
            self.batch_size = max(1, len(batch) // 2)
            log.warning(
                "the log refused a batch of %d as too large; sending %d at a time",
                len(batch),
                self.batch_size,
            )
            return self.submit_batch()
        if response.status_code not in (200, 422):
            raise LogRefusedError(
                f"{self.log_url}{SUBMIT_PATH}: HTTP {response.status_code}: {response.text[:300]}"
            )
        checked = self._check(batch, _json(response))
        for signed in checked.checkpoints.values():
            self._check_consistent(signed)
        self.spool.mark_answered(checked.answers, self.clock_ms())
        for signed in checked.checkpoints.values():
            self._remember(signed)
        counts = checked.counts
        self.stats.batches += 1
        for state in ("logged", "duplicate", "rejected", "conflict"):
            setattr(self.stats, state, getattr(self.stats, state) + counts.get(state, 0))
        log.info(
            "batch of %d: %s; tree size %s",
            len(batch),
            ", ".join(f"{n} {state}" for state, n in sorted(counts.items())),
            "?" if self._latest is None else self._latest.checkpoint.tree_size,
        )
        for answer in checked.answers:
            if answer.state in ("rejected", "conflict"):
                log.error(
                    "the log %s a receipt (seq %d): %s", answer.state, answer.seq, answer.error
                )
        return BatchOutcome(
            sent=len(batch),
            logged=counts.get("logged", 0),
            duplicate=counts.get("duplicate", 0),
            rejected=counts.get("rejected", 0),
            conflict=counts.get("conflict", 0),
            tree_size=0 if self._latest is None else self._latest.checkpoint.tree_size,
        )

    def _post(self, batch: Sequence[PendingReceipt]) -> httpx.Response:
        url = self.log_url + SUBMIT_PATH
        body = b"".join(p.entry + b"\n" for p in batch)
        try:
            response = self.client.post(
                url, content=body, headers={"Content-Type": "application/jsonl"}
            )
        except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
            raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = _retry_after_s(response.headers.get("retry-after"), time.time())
            raise LogUnavailableError(
                f"{url}: HTTP {response.status_code}: {response.text[:200]}", retry_after
            )
        return response

    # -- verifying an answer ------------------------------------------------------------------

    def _check(self, batch: Sequence[PendingReceipt], answer: dict[str, object]) -> _Checked:
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(batch):
            raise LogMisbehaviourError(
                f"the answer does not have one result per receipt sent ({len(batch)})"
            )
        checked = _Checked()
        for pending, result in zip(batch, results, strict=True):
            if not isinstance(result, dict):
                raise LogMisbehaviourError("a result is not a JSON object", pending.request_id)
            status = result.get("status")
            index = result.get("index")
            if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
                raise LogMisbehaviourError(f"index {index!r} is not an integer", pending.request_id)
            if status in ("logged", "duplicate"):
                bundle = self._check_bundle(pending, index, result.get("bundle"), checked)
                checked.answers.append(Answer(pending.seq, "verified", index, bundle))
            elif status in ("rejected", "conflict"):
                error = _error_text(result)
                checked.answers.append(Answer(pending.seq, str(status), index, error=error))
            else:
                raise LogMisbehaviourError(f"unknown status {status!r}", pending.request_id)
            checked.counts[str(status)] = checked.counts.get(str(status), 0) + 1
        return checked

    def _check_bundle(
        self, pending: PendingReceipt, index: int | None, text: object, checked: _Checked
    ) -> bytes:
        """The bundle's bytes, once it proves that exactly this receipt is logged at
        ``index`` under a checkpoint the log key signed; LogMisbehaviourError otherwise."""
        request_id = pending.request_id
        if not isinstance(text, str) or index is None:
            raise LogMisbehaviourError(
                "a logged receipt's answer has no bundle or index", request_id
            )
        data = text.encode()
        try:
            bundle = parse_bundle(data)
            signed = checked.checkpoints.get(bundle.checkpoint)
            if signed is None:
                signed = open_checkpoint(bundle.checkpoint, [self.log_key], origin=self.origin)
                checked.checkpoints[bundle.checkpoint] = signed
            verified = verify_bundle_inclusion(bundle, signed)
            logged = decode_entry(verified.entry)
        except (MalformedError, VerificationError) as exc:
            raise LogMisbehaviourError(f"the bundle does not verify: {exc}", request_id) from exc
        if verified.index != index:
            raise LogMisbehaviourError(
                f"the answer says index {index}, the bundle proves {verified.index}", request_id
            )
        if not isinstance(logged, Receipt) or logged.logged_at_ms is None:
            raise LogMisbehaviourError(
                "the logged entry is not a receipt with logged_at_ms", request_id
            )
        if encode_entry(dataclasses.replace(logged, logged_at_ms=None)) != pending.entry:
            raise LogMisbehaviourError(
                "the logged entry is not the receipt that was sent", request_id
            )
        return data

    def _check_consistent(self, signed: SignedCheckpoint) -> None:
        """LogForkError unless ``signed`` and the latest checkpoint this spool verified are
        one tree (the smaller a prefix of the larger, by the log's consistency proof)."""
        latest = self._latest
        if latest is None:
            return
        old, new = latest, signed
        if old.checkpoint.tree_size > new.checkpoint.tree_size:
            old, new = new, old
        old_size, new_size = old.checkpoint.tree_size, new.checkpoint.tree_size
        proof: list[bytes] = []
        if 0 < old_size < new_size:
            proof = self._consistency_proof(old_size, new_size)
        try:
            verify_checkpoints_consistent(old, new, proof)
        except InconsistentLogError as exc:
            raise LogForkError(
                f"checkpoints of sizes {old_size} and {new_size} are not one history: {exc.reason}",
                old.signed_note,
                new.signed_note,
                format_fork_evidence(ForkEvidence.from_error(exc)),
            ) from exc
        except (VerificationError, MalformedError) as exc:
            # A proof that shows nothing (a bad proof, or one from a power of two, which
            # leaves the old root out): misbehaviour, but no evidence of a fork to keep.
            raise LogMisbehaviourError(
                f"the log's consistency proof from {old_size} to {new_size} fails: {exc}"
            ) from exc

    def _consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        url = f"{self.log_url}{CONSISTENCY_PATH}?old_size={old_size}&new_size={new_size}"
        try:
            response = self.client.get(url)
        except httpx.TransportError as exc:
            raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise LogUnavailableError(f"{url}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise LogMisbehaviourError(
                f"no consistency proof from {old_size} to {new_size}: HTTP "
                f"{response.status_code}: {response.text[:200]}"
            )
        proof = _json(response).get("proof")
        if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
            raise LogMisbehaviourError("the consistency proof is not a list of base64 hashes")
        try:
            return [decode_b64(h, "proof") for h in proof]
        except MalformedError as exc:
            raise LogMisbehaviourError(f"the consistency proof is malformed: {exc}") from exc

    def _remember(self, signed: SignedCheckpoint) -> None:
        if self._latest is None or signed.checkpoint.tree_size > self._latest.checkpoint.tree_size:
            self._latest = signed
            self.spool.set_meta(CHECKPOINT_META, signed.signed_note)

    # -- draining -----------------------------------------------------------------------------

    def _wait_s(self, failures: int, error: LogUnavailableError) -> float:
        delay = self.backoff.delay_s(failures, self.random_unit())
        if error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return delay

    def drain(
        self,
        sleep: Callable[[float], bool],
        *,
        give_up_after: int | None = None,
        until_empty: bool = True,
    ) -> None:
        """Submit batches until nothing is pending (``until_empty``) or ``sleep`` says stop.

        Unavailability is retried with backoff through ``sleep(seconds)``, which returns
        True to stop; after ``give_up_after`` failures in a row the last LogUnavailableError
        is raised. LogRefusedError and LogMisbehaviourError are raised at once.
        """
        failures = 0
        while True:
            try:
                outcome = self.submit_batch()
            except LogUnavailableError as exc:
                failures += 1
                self.stats.retries += 1
                self.stats.last_error = str(exc)
                log.warning("the log is unavailable (attempt %d): %s", failures, exc)
                if give_up_after is not None and failures >= give_up_after:
                    raise
                if sleep(self._wait_s(failures, exc)):
                    return
                continue
            failures = 0
            if outcome is None and until_empty:
                return
            if outcome is None and sleep(self.batch_wait_s):
                return

    def run(self, stop: threading.Event, poll_s: float = 0.1) -> None:
        """Drain continuously until ``stop`` is set: a batch goes when ``batch_size``
        receipts are pending or the oldest has waited ``batch_wait_s``. Raises
        LogRefusedError or LogMisbehaviourError (after logging it) when it must stop."""
        failures = 0
        while not stop.is_set():
            status = self.spool.status()
            age_ms = status.oldest_pending_age_ms(self.clock_ms())
            if age_ms is None or (
                status.pending < self.batch_size and age_ms < self.batch_wait_s * 1000
            ):
                wait_s = poll_s if age_ms is None else self.batch_wait_s - age_ms / 1000
                stop.wait(max(0.001, min(poll_s, wait_s)))
                continue
            try:
                self.submit_batch()
            except LogUnavailableError as exc:
                failures += 1
                self.stats.retries += 1
                self.stats.last_error = str(exc)
                log.warning("the log is unavailable (attempt %d): %s", failures, exc)
                stop.wait(self._wait_s(failures, exc))
                continue
            except (LogRefusedError, LogMisbehaviourError) as exc:
                self.stats.last_error = str(exc)
                log.critical("STOPPED: %s", exc)
                raise
            failures = 0
