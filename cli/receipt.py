"""``meterlog receipt make`` and ``meterlog receipt submit``: receipts by hand, to a live log.

Owns the command line's receipts: ``make`` signs receipts with an edge key and prints each
as one canonical JSON line; ``submit`` posts a JSON Lines file to a log and keeps nothing it
has not verified: each answer's bundle must verify against the log key given on the command
line (the log itself is not trusted for it), and the entry in it must be the receipt that was
sent plus the log's ``logged_at_ms``. Imports tlog, verifier.cli and cli.

Exit codes of ``submit``: 0 every receipt logged (or already logged) and its bundle verified
and written; 1 a receipt was refused (rejected or conflict) or a bundle failed verification;
2 usage error; 3 the log is unavailable (bundles verified before that are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.client import LogUnavailableError, answer_json, describe_error, error_text, log_url, post
from cli.keys import read_signing_key
from tlog.bundle import parse_bundle, verify_bundle
from tlog.entry import CACHE_STATUSES, SCOPES, Receipt, decode_entry, encode_entry, sign_receipt
from tlog.errors import MalformedError, VerificationError
from tlog.note import Verifier
from verifier.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, UsageError, load_vkey

__all__ = [
    "add_receipt_commands",
    "make_receipts",
    "proof_file_name",
    "read_receipt_lines",
    "submit_receipts",
]

SUBMIT_PATH = "/v1/receipts"
MAX_BATCH_LINES = 1024
"""The log's default ``max_batch_receipts``."""
MAX_BATCH_BYTES = 4 << 20
"""Half the log's default ``max_body_bytes``."""
PROOF_SUFFIX = ".tlog-proof"

# Which flag sets which receipt field, to name the flag in usage errors.
_FLAGS = {
    "receipt.request_id": "--request-id",
    "receipt.edge": "--edge",
    "receipt.consumer_id": "--consumer",
    "receipt.token_id": "--token-id",
    "receipt.job_id": "--job-id",
    "receipt.scope": "--scope",
    "receipt.content_id": "--content-id",
    "receipt.creator_id": "--creator",
    "receipt.manifest": "--manifest",
    "receipt.bytes_sent": "--bytes",
    "receipt.cache": "--cache",
    "receipt.served_at_ms": "--served-at-ms",
}


# -- make -------------------------------------------------------------------------------------


def _random_id() -> str:
    return os.urandom(16).hex()


def _random_digest() -> str:
    return "sha256:" + os.urandom(32).hex()


def _digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_receipts(args: argparse.Namespace, now_ms: int) -> list[Receipt]:
    """The signed receipts ``receipt make`` prints (``now_ms``: the default served_at_ms)."""
    if args.count < 1:
        raise UsageError(f"--count {args.count}: must be at least 1")
    if args.count > 1 and args.request_id is not None:
        raise UsageError("--request-id names one receipt; with --count they are random")
    key = read_signing_key(Path(args.key_file))
    if key.name != args.edge:
        raise UsageError(f"--edge {args.edge}: the key in {args.key_file} is named {key.name!r}")
    receipts = []
    for _ in range(args.count):
        content_id = args.content_id or _random_digest()
        try:
            receipt = Receipt(
                request_id=args.request_id or _random_id(),
                edge=args.edge,
                consumer_id=args.consumer,
                token_id=args.token_id,
                job_id=args.job_id,
                scope=args.scope,
                content_id=content_id,
                creator_id=args.creator,
                manifest=args.manifest or _digest_of(content_id),
                bytes_sent=args.bytes,
                cache=args.cache,
                served_at_ms=now_ms if args.served_at_ms is None else args.served_at_ms,
            )
        except MalformedError as exc:
            raise UsageError(f"{_FLAGS.get(exc.field, exc.field)}: {exc.reason}") from exc
        receipts.append(sign_receipt(receipt, key))
    return receipts


def _run_make(args: argparse.Namespace) -> int:
    receipts = make_receipts(args, time.time_ns() // 1_000_000)
    for receipt in receipts:
        sys.stdout.write(encode_entry(receipt).decode() + "\n")
    sys.stdout.flush()
    print(
        f"signed {len(receipts)} receipt(s) as {args.edge} (key ID {receipts[0].key_id})",
        file=sys.stderr,
    )
    return EXIT_OK


# -- submit -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One receipt line of the input file: its 1-based line number and bytes, decoded."""

    number: int
    data: bytes
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one input line."""

    number: int
    request_id: str | None
    status: str
    """``logged``, ``duplicate``, ``conflict``, ``rejected`` or ``failed`` (verification)."""
    index: int | None = None
    file: Path | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("logged", "duplicate")

    def to_json(self) -> dict[str, object]:
        return {
            "line": self.number,
            "request_id": self.request_id,
            "status": self.status,
            "index": self.index,
            "file": None if self.file is None else str(self.file),
            "error": self.error,
        }


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def proof_file_name(edge: str, request_id: str) -> str:
    """``<request_id>.tlog-proof``, or, when the request id is not a safe file name (it may
    hold '/', '..' and the like), ``sha256-<hex of edge, newline, request id>.tlog-proof``.
    """
    if _SAFE_NAME.fullmatch(request_id):
        return request_id + PROOF_SUFFIX
    digest = hashlib.sha256(f"{edge}\n{request_id}".encode()).hexdigest()
    return f"sha256-{digest}{PROOF_SUFFIX}"


def read_receipt_lines(path: str) -> tuple[list[Line], list[Outcome]]:
    """The file's receipts, and an outcome for each line that is not one (not sent)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    lines: list[Line] = []
    bad: list[Outcome] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entry = decode_entry(raw)
        except MalformedError as exc:
            bad.append(Outcome(number, None, "rejected", error=f"not sent: {exc}"))
            continue
        if not isinstance(entry, Receipt) or entry.logged_at_ms is not None:
            reason = "not sent: not a receipt, or already has logged_at_ms"
            bad.append(Outcome(number, None, "rejected", error=reason))
            continue
        lines.append(Line(number, raw, entry))
    return lines, bad


def _batches(lines: Sequence[Line]) -> Iterator[list[Line]]:
    batch: list[Line] = []
    size = 0
    for line in lines:
        if batch and (len(batch) == MAX_BATCH_LINES or size + len(line.data) > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line.data) + 1
    if batch:
        yield batch


def check_logged(
    receipt: Receipt, index: object, bundle_text: object, log_key: Verifier, origin: str | None
) -> bytes:
    """The bundle's bytes, once verified: signed by ``log_key``, proving inclusion at
    ``index`` of exactly ``receipt`` plus a ``logged_at_ms``. Raises VerificationError or
    MalformedError."""
    if not isinstance(bundle_text, str):
        raise MalformedError("result.bundle", "missing")
    data = bundle_text.encode()
    verified = verify_bundle(parse_bundle(data), [log_key], origin=origin)
    if verified.index != index:
        raise VerificationError(f"the bundle proves index {verified.index}, not {index}")
    logged = decode_entry(verified.entry)
    if not isinstance(logged, Receipt) or logged.logged_at_ms is None:
        raise VerificationError("the bundle's entry is not a logged receipt")
    if logged.signed_fields() != receipt.signed_fields():
        raise VerificationError("the bundle's entry is not the receipt that was submitted")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def _outcome(
    line: Line, result: object, log_key: Verifier, origin: str | None, out: Path
) -> Outcome:
    receipt = line.receipt
    if not isinstance(result, dict):
        return Outcome(line.number, receipt.request_id, "failed", error="no result from the log")
    status = result.get("status")
    index = result.get("index")
    index = index if isinstance(index, int) and not isinstance(index, bool) else None
    if status in ("rejected", "conflict"):
        error = describe_error(result.get("error"))
        return Outcome(line.number, receipt.request_id, str(status), index, error=error)
    if status not in ("logged", "duplicate"):
        return Outcome(line.number, receipt.request_id, "failed", error=f"status {status!r}")
    try:
        data = check_logged(receipt, index, result.get("bundle"), log_key, origin)
    except (MalformedError, VerificationError) as exc:
        error = f"bundle does not verify: {exc}"
        return Outcome(line.number, receipt.request_id, "failed", index, error=error)
    path = out / proof_file_name(receipt.edge, receipt.request_id)
    _write_atomic(path, data)
    return Outcome(line.number, receipt.request_id, str(status), index, path)


def submit_receipts(
    lines: Sequence[Line],
    url: str,
    log_key: Verifier,
    out: Path,
    *,
    origin: str | None = None,
    timeout_s: float = 30.0,
) -> Iterator[Outcome]:
    """Post ``lines`` in batches; yield each line's outcome, writing each verified bundle to
    ``out``. Raises LogUnavailableError when the log does not answer (or answers 5xx)."""
    for batch in _batches(lines):
        body = b"".join(line.data + b"\n" for line in batch)
        response = post(url, body, "application/jsonl", timeout_s=timeout_s)
        if response.status_code not in (200, 422):
            error = f"batch refused (HTTP {response.status_code}): {error_text(response)}"
            for line in batch:
                yield Outcome(line.number, line.receipt.request_id, "rejected", error=error)
            continue
        results = answer_json(response).get("results")
        if not isinstance(results, list) or len(results) != len(batch):
            raise LogUnavailableError(f"{url}: the answer does not have one result per receipt")
        for line, result in zip(batch, results, strict=True):
            yield _outcome(line, result, log_key, origin, out)


def _say(outcome: Outcome) -> None:
    if outcome.ok:
        return
    where = f"line {outcome.number}" + (f" ({outcome.request_id})" if outcome.request_id else "")
    at = "" if outcome.index is None else f" at index {outcome.index}"
    label = "FAILED" if outcome.status == "failed" else outcome.status
    print(f"  {label:<9} {where}{at}: {outcome.error}", file=sys.stderr)


def _run_submit(args: argparse.Namespace) -> int:
    url = log_url(args.log) + SUBMIT_PATH
    log_key = load_vkey(args.key)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from exc
    lines, outcomes = read_receipt_lines(args.file)
    total = len(lines) + len(outcomes)
    for outcome in outcomes:
        _say(outcome)
    status = EXIT_OK
    try:
        for outcome in submit_receipts(
            lines, url, log_key, out, origin=args.origin, timeout_s=args.timeout
        ):
            outcomes.append(outcome)
            _say(outcome)
    except LogUnavailableError as exc:
        print(f"meterlog: the log is unavailable: {exc}", file=sys.stderr)
        status = EXIT_UNAVAILABLE
    outcomes.sort(key=lambda o: o.number)
    if args.json:
        for outcome in outcomes:
            print(json.dumps(outcome.to_json(), sort_keys=True))
    counts = dict.fromkeys(("logged", "duplicate", "rejected", "conflict", "failed"), 0)
    for outcome in outcomes:
        counts[outcome.status] += 1
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    if len(outcomes) < total:
        parts.append(f"{total - len(outcomes)} not answered")
    summary = ", ".join(parts)
    verified = counts["logged"] + counts["duplicate"]
    print(
        f"{args.file}: {total} receipt(s): {summary or 'none'}; "
        f"{verified} bundle(s) verified and written to {out}",
        file=sys.stderr,
    )
    if status == EXIT_OK and any(not o.ok for o in outcomes):
        status = EXIT_FAILED
    return status


# -- the parser -------------------------------------------------------------------------------


def _nonnegative(text: str) -> int:
    if not text.isdigit() or str(int(text)) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative decimal integer")
    return int(text)


def add_receipt_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``receipt make`` and ``receipt submit`` under the ``receipt`` noun."""
    receipt = subparsers.add_parser(
        "receipt",
        help="sign receipts by hand, and submit them to a log with verified proofs",
        description="Make signed receipts as an edge would, and submit them to a running log.",
    )
    verbs = receipt.add_subparsers(dest="verb", required=True, metavar="VERB")

    make = verbs.add_parser(
        "make",
        help="sign receipts with an edge key; print one canonical JSON line each",
        description="Sign receipts with an edge key (from meterlog keygen) and print each as "
        "one canonical JSON line on stdout, ready for receipt submit. logged_at_ms is left "
        "for the log to set.",
    )
    make.add_argument("--key-file", required=True, metavar="FILE", help="the edge's signing key")
    make.add_argument("--edge", required=True, metavar="ID", help="the edge id (its key name)")
    make.add_argument(
        "--content-id",
        metavar="sha256:HEX",
        help="the content delivered (default: a random sha256:..., fresh for each receipt)",
    )
    make.add_argument("--creator", required=True, metavar="ID", help="the content's creator")
    make.add_argument("--consumer", required=True, metavar="ID", help="who fetched it")
    make.add_argument("--token-id", default="cli", metavar="ID", help="default: cli")
    make.add_argument("--job-id", metavar="ID", help="the consumer's job, if any")
    make.add_argument("--scope", choices=SCOPES, default="inference", help="default: inference")
    make.add_argument(
        "--manifest", metavar="sha256:HEX", help="default: the sha256 of the content id's text"
    )
    make.add_argument(
        "--bytes", type=_nonnegative, default=1 << 20, metavar="N", help="default: 1048576"
    )
    make.add_argument("--cache", choices=CACHE_STATUSES, default="miss", help="default: miss")
    make.add_argument(
        "--served-at-ms", type=_nonnegative, metavar="MS", help="Unix ms (default: now)"
    )
    make.add_argument("--request-id", metavar="ID", help="default: random (16 bytes, hex)")
    make.add_argument(
        "--count",
        type=_nonnegative,
        default=1,
        metavar="N",
        help="make N receipts, each with a fresh random request id (default: 1)",
    )
    make.set_defaults(func=_run_make)

    submit = verbs.add_parser(
        "submit",
        help="post JSON Lines receipts to a log; verify and save each proof bundle",
        description="Post the receipts in FILE (one canonical JSON receipt a line) to the "
        f"log in batches of at most {MAX_BATCH_LINES}. For each one logged (or logged "
        "before), verify the returned .tlog-proof against --key, check that its entry is "
        "the submitted receipt plus logged_at_ms, and write it to "
        f"OUT/<request_id>{PROOF_SUFFIX}. Refusals and failures are listed on stderr. "
        "Exit codes: 0 all logged and verified, 1 a receipt refused or a bundle failed, "
        "2 usage error, 3 log unavailable.",
    )
    submit.add_argument("file", metavar="FILE.jsonl", help="signed receipts, one JSON a line")
    submit.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    submit.add_argument("--out", required=True, metavar="DIR", help="where bundles are written")
    submit.add_argument(
        "--key",
        required=True,
        metavar="VKEY",
        help="the log's verifier key, or a file holding it (the server's DATA_DIR/log.vkey)",
    )
    submit.add_argument("--origin", help="also require this checkpoint origin")
    submit.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout (default: 30)"
    )
    submit.add_argument(
        "--json", action="store_true", help="print one JSON object per receipt on stdout"
    )
    submit.set_defaults(func=_run_submit)
