"""The ``meterlog verify ...`` commands: argument parsing and output for the verifier.

Owns the verifier's command-line surface and its exit codes: ``verify checkpoint|bundle``
(offline), ``verify inclusion|consistency|monitor`` (online, proofs from tiles), ``verify
evidence``, and ``receipts get``. The checks themselves are in :mod:`verifier.offline`,
:mod:`verifier.online` and :mod:`verifier.monitor`. Human-readable lines go to stderr; with
``--json``, one JSON object per checked file (or step) goes to stdout. Imports tlog and
verifier only.

Exit codes (every verifier command):

====  =====================================================================
0     everything asked for verified
1     verification failed (bad signature, proof, format, or policy)
2     usage error (bad flags, unreadable file, malformed key)
3     network or log unavailable (online commands)
10    log fork detected (two checkpoints no consistency proof joins)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tlog.errors import InconsistentLogError, MalformedError, VerificationError
from tlog.evidence import Fork
from tlog.note import ALG_COSIGNATURE_V1, ALG_ED25519, Verifier, parse_vkey
from tlog.policy import parse_policy
from verifier.client import LogClient, LogUnavailableError
from verifier.monitor import Monitor, Problem, Progress
from verifier.offline import (
    Report,
    TrustPolicy,
    anchors_not_checked,
    check_bundle,
    check_checkpoint,
    check_fork_evidence,
)
from verifier.online import ForkFoundError, check_consistency, check_inclusion, fetch_receipts

__all__ = [
    "EXIT_FAILED",
    "EXIT_FORK",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "add_receipts_commands",
    "add_verify_commands",
    "emit_evidence",
    "load_vkey",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FORK = 10


class UsageError(Exception):
    """A command-line mistake: reported on stderr with exit code 2."""


def load_vkey(value: str, flag: str = "--key") -> Verifier:
    """A verifier key given on the command line: the key string itself, or a file holding it."""
    path = Path(value)
    text = value
    if "+" not in value or path.is_file():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"{flag} {value}: neither a key nor a readable file ({exc})") from exc
    try:
        return parse_vkey(text)
    except MalformedError as exc:
        raise UsageError(f"{flag} {value}: not a verifier key: {exc}") from exc


def _policy(args: argparse.Namespace) -> TrustPolicy:
    """The trust policy of ``--key``/``--witness``/``--quorum``, or of ``--policy FILE``."""
    if args.policy is not None:
        if args.key or args.witness or args.quorum is not None:
            raise UsageError("--policy holds the keys: give it without --key, --witness, --quorum")
        try:
            policy = parse_policy(_read(args.policy).decode("utf-8"))
        except (MalformedError, UnicodeDecodeError) as exc:
            raise UsageError(f"--policy {args.policy}: {exc}") from exc
        return TrustPolicy(origin=args.origin, policy=policy)
    if not args.key:
        raise UsageError("give the log's key with --key VKEY (or a policy file with --policy)")
    log_keys = tuple(load_vkey(k) for k in args.key)
    for key in log_keys:
        if key.alg != ALG_ED25519:
            raise UsageError(f"--key {key.name}: not a log key (Ed25519, type 0x01)")
    witnesses = tuple(load_vkey(w, "--witness") for w in args.witness)
    for witness in witnesses:
        if witness.alg != ALG_COSIGNATURE_V1:
            raise UsageError(f"--witness {witness.name}: not a cosignature/v1 (type 0x04) key")
    quorum = len(witnesses) if args.quorum is None else args.quorum
    if not 0 <= quorum <= len(witnesses):
        raise UsageError(f"--quorum {quorum}: must be between 0 and the {len(witnesses)} witnesses")
    return TrustPolicy(log_keys, witnesses, quorum, args.origin)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc


def _emit(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json(), sort_keys=True))
    verdict = "OK" if report.ok else "FAILED"
    if report.ok and report.not_checked:
        verdict += f" ({report.not_checked} not checked)"
    print(f"{verdict}  {report.subject}", file=sys.stderr)
    for check in report.checks:
        print(f"  {check.status:<12} {check.name}: {check.detail}", file=sys.stderr)


def _run_checkpoint(args: argparse.Namespace) -> int:
    policy = _policy(args)
    report = check_checkpoint(_read(args.file), policy, subject=args.file)
    _emit(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def _run_bundle(args: argparse.Namespace) -> int:
    policy = _policy(args)
    edge_keys = [load_vkey(k, "--edge-key") for k in args.edge_key]
    operator_keys = [load_vkey(k, "--operator-key") for k in args.operator_key]
    status = EXIT_OK
    for path in args.files:
        report = check_bundle(_read(path), policy, edge_keys, operator_keys, subject=path)
        _emit(report, args.json)
        if not report.ok:
            status = EXIT_FAILED
    return status


def _add_policy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="VKEY",
        help="the log's verifier key, or a file holding it (repeatable: any one may sign)",
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="a C2SP tlog-policy style file (log keys, witnesses, groups, quorum) instead of "
        "--key/--witness/--quorum",
    )
    parser.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a trusted witness's cosignature/v1 key, or a file holding it (repeatable)",
    )
    parser.add_argument(
        "--quorum",
        type=int,
        metavar="N",
        help="how many of the --witness keys must have cosigned (default: all of them)",
    )
    parser.add_argument("--origin", help="require this checkpoint origin")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON report per file on stdout"
    )


def add_verify_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``verify checkpoint|bundle|inclusion|consistency|monitor|evidence``."""
    verify = subparsers.add_parser(
        "verify",
        help="check checkpoints and proof bundles without trusting the log",
        description="Check what a log published, with no trust in the log. " + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = verify.add_subparsers(dest="verb", required=True, metavar="VERB")

    checkpoint = verbs.add_parser(
        "checkpoint",
        help="verify a signed checkpoint (C2SP tlog-checkpoint) against the log's key",
        description="Verify a signed checkpoint note: a --key signed it, and the --witness "
        "quorum cosigned it if witnesses are given. " + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    checkpoint.add_argument("file", help="the signed checkpoint note")
    _add_policy_flags(checkpoint)
    checkpoint.set_defaults(func=_run_checkpoint)

    bundle = verbs.add_parser(
        "bundle",
        help="verify .tlog-proof bundles offline: checkpoint, inclusion, entry signature",
        description="Verify C2SP tlog-proof bundles offline: the checkpoint's signature and "
        "witness quorum, the entry's inclusion under it, and the entry's own signature "
        "when its key is given. " + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bundle.add_argument("files", nargs="+", metavar="FILE", help=".tlog-proof files")
    _add_policy_flags(bundle)
    bundle.add_argument(
        "--edge-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="an edge's verifier key, to check receipt signatures (repeatable)",
    )
    bundle.add_argument(
        "--operator-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="the operator's verifier key, to check edge_key entries (repeatable)",
    )
    bundle.set_defaults(func=_run_bundle)
    _add_online_commands(verbs)


# -- online commands ------------------------------------------------------------------------


def _log_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"--log {value}: not an http:// or https:// URL without query")
    return value.rstrip("/")


def _cache_dir(args: argparse.Namespace, url: str) -> Path | None:
    if args.no_cache:
        return None
    if args.cache is not None:
        return Path(args.cache)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "meterlog" / "tiles" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _client(args: argparse.Namespace, cache_dir: Path | None = None) -> LogClient:
    url = _log_url(args.log)
    return LogClient(url, cache_dir=cache_dir or _cache_dir(args, url), timeout_s=args.timeout)


def _online(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Map what can go wrong talking to a log onto the exit codes."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except LogUnavailableError as exc:
            print(f"meterlog: the log is unavailable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except ForkFoundError as exc:
            print(f"FORK DETECTED: {exc.error.reason}", file=sys.stderr)
            print(f"  evidence: {exc.evidence}", file=sys.stderr)
            if args.json:
                print(
                    json.dumps(
                        {"fork": True, "reason": exc.error.reason, "evidence": str(exc.evidence)},
                        sort_keys=True,
                    )
                )
            return EXIT_FORK
        except (VerificationError, MalformedError) as exc:
            print(f"FAILED  {exc}", file=sys.stderr)
            if args.json:
                print(json.dumps({"ok": False, "error": str(exc)}, sort_keys=True))
            return EXIT_FAILED

    return wrapped


@_online
def _run_inclusion(args: argparse.Namespace) -> int:
    policy = _policy(args)
    if (args.request_id is None) != (args.edge is None):
        raise UsageError("--request-id and --edge go together")
    if args.index is not None and args.index < 0:
        raise UsageError(f"--index {args.index}: an index is 0 or more")
    given = [args.index is not None, args.bundle is not None, args.request_id is not None]
    if sum(given) != 1:
        raise UsageError("give exactly one of --index, --bundle, or --request-id with --edge")
    bundle = _read(args.bundle) if args.bundle is not None else None
    with _client(args) as client:
        report = check_inclusion(
            client, policy, index=args.index, bundle=bundle, edge=args.edge,
            request_id=args.request_id, evidence_dir=Path(args.evidence_dir),
            out=None if args.out is None else Path(args.out),
        )  # fmt: skip
    _emit(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


@_online
def _run_consistency(args: argparse.Namespace) -> int:
    policy = _policy(args)
    with _client(args) as client:
        report = check_consistency(client, policy, args.old, args.new, Path(args.evidence_dir))
    _emit(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def _say_progress(progress: Progress) -> None:
    print(
        f"  monitor: {progress.done:,} of {progress.total:,} entries checked, "
        f"{progress.entries_per_s:,.0f} entries/s, about {progress.remaining_s:,.0f} s left",
        file=sys.stderr,
        flush=True,
    )


@_online
def _run_monitor(args: argparse.Namespace) -> int:
    policy = _policy(args)
    operator_keys = [load_vkey(k, "--operator-key") for k in args.operator_key]
    state_dir = Path(args.state)
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval}: must be positive")
    url = _log_url(args.log)

    def problem(found: Problem) -> None:
        print(f"  PROBLEM at index {found.index}: {found.kind}: {found.detail}", file=sys.stderr)
        if args.json:
            print(json.dumps(found.to_json(), sort_keys=True), flush=True)

    with LogClient(
        url, cache_dir=state_dir / "tiles", timeout_s=args.timeout, cache_entries=False
    ) as client:
        try:
            monitor = Monitor(
                client, policy, state_dir, full=args.full, operator_keys=operator_keys,
                on_progress=_say_progress, on_problem=problem,
            )  # fmt: skip
        except MalformedError as exc:
            raise UsageError(str(exc)) from exc
        found = 0
        while True:
            try:
                result = monitor.step()
            except InconsistentLogError as exc:
                evidence = monitor.last_evidence or state_dir
                raise ForkFoundError(exc, evidence) from exc
            except LogUnavailableError as exc:
                if args.once:
                    raise
                print(f"  monitor: the log is unavailable ({exc}); retrying", file=sys.stderr)
            else:
                found += len(result.problems)
                print(
                    f"monitor: {url}: {result.note}"
                    + (f"; {result.entries_checked:,} entries checked" if args.full else "")
                    + (f", {len(result.problems)} problem(s)" if result.problems else ""),
                    file=sys.stderr,
                    flush=True,
                )
                if args.json:
                    print(json.dumps({
                        "ok": not result.problems, "tree_size": result.tree_size,
                        "previous_size": result.previous_size,
                        "entries_checked": result.entries_checked,
                        "problems": len(result.problems), "note": result.note,
                    }, sort_keys=True), flush=True)  # fmt: skip
            if args.once:
                return EXIT_FAILED if found else EXIT_OK
            try:
                time.sleep(args.interval)
            except KeyboardInterrupt:
                return EXIT_FAILED if found else EXIT_OK


def _run_evidence(args: argparse.Namespace) -> int:
    policy = _policy(args)
    report, fork = check_fork_evidence(_read(args.file), policy, subject=args.file)
    if fork is not None and fork.anchors:
        confirm = getattr(args, "confirm_anchors", None)
        if confirm is not None and getattr(args, "rpc", None) is not None:
            status = confirm(args, report, fork)  # cli.anchor's: the anchors on chain
            if status is not None:
                return int(status)
        else:
            anchors_not_checked(report, fork, "not checked offline (give --rpc URL)")
    return emit_evidence(report, fork, as_json=args.json)


def emit_evidence(report: Report, fork: Fork | None, *, as_json: bool) -> int:
    """Print what ``verify evidence`` found; its exit code (10 a fork, 1 none).

    An anchor is not signed by the log key: anyone may call the anchor contract with the
    log's origin hash. So evidence with an anchor in it proves a fork only when every check
    of the anchor ran -- on chain (--rpc) and sent by the log's anchoring address (--from);
    with any of them left unchecked it is not proven, and the exit code is 1."""
    unproven = fork is not None and bool(fork.anchors) and report.not_checked > 0
    shown = fork is not None and report.ok and not unproven
    if as_json:
        print(json.dumps({**report.to_json(), "fork": shown}, sort_keys=True))
    if unproven and report.ok:
        print(
            f"NOT PROVEN  {report.subject}: the checkpoint side holds, but an anchor is only "
            "evidence once it is found on chain (--rpc URL), sent by the log's anchoring "
            "address (--from ADDR)",
            file=sys.stderr,
        )
        for check in report.checks:
            print(f"  {check.status:<12} {check.name}: {check.detail}", file=sys.stderr)
        return EXIT_FAILED
    if not shown:
        failed = [c for c in report.checks if c.status == "failed"]
        print(f"NOT EVIDENCE OF A FORK  {report.subject}: {failed[-1].detail}", file=sys.stderr)
        for check in report.checks:
            print(f"  {check.status:<12} {check.name}: {check.detail}", file=sys.stderr)
        return EXIT_FAILED
    assert fork is not None  # noqa: S101 -- shown
    verdict = "FORK" + (f" ({report.not_checked} not checked)" if report.not_checked else "")
    print(
        f"{verdict}  {report.subject}: {fork.origin}: the log committed to two roots for tree "
        f"size {fork.tree_size}",
        file=sys.stderr,
    )
    for check in report.checks:
        print(f"  {check.status:<12} {check.name}: {check.detail}", file=sys.stderr)
    return EXIT_FORK


@_online
def _run_receipts_get(args: argparse.Namespace) -> int:
    policy = _policy(args)
    operator_keys = [load_vkey(k, "--operator-key") for k in args.operator_key]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from exc
    ok = failed = skipped = 0
    with _client(args) as client:
        for report in fetch_receipts(
            client, policy, out, consumer=args.consumer, job=args.job,
            operator_keys=operator_keys, evidence_dir=Path(args.evidence_dir),
        ):  # fmt: skip
            if report.ok and args.json:
                print(json.dumps(report.to_json(), sort_keys=True))
            if report.facts.get("skipped"):
                skipped += 1
            elif report.ok:
                ok += 1
            else:
                failed += 1
                _emit(report, args.json)
    print(
        f"receipts: {ok} verified and written to {out}, {failed} failed"
        + (f", {skipped} of other consumers skipped" if skipped else ""),
        file=sys.stderr,
    )
    return EXIT_FAILED if failed else EXIT_OK


def _add_online_flags(parser: argparse.ArgumentParser, *, cache: bool = True) -> None:
    parser.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout (default: 30)"
    )
    parser.add_argument(
        "--evidence-dir", default=".", metavar="DIR",
        help="where fork evidence is written if a fork is found (default: .)",
    )  # fmt: skip
    if cache:
        parser.add_argument(
            "--cache", metavar="DIR",
            help="the tile cache (default: $XDG_CACHE_HOME/meterlog/tiles/<hash of the URL>)",
        )  # fmt: skip
        parser.add_argument("--no-cache", action="store_true", help="cache no tiles on disk")


def _add_online_commands(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    inclusion = verbs.add_parser(
        "inclusion",
        help="prove an entry is in a live log, with a proof computed from its tiles",
        description="Fetch the log's checkpoint, verify it, and prove an entry's inclusion "
        "with hashes read from tiles authenticated against it (no proof from the server is "
        "trusted). With --bundle, the bundle is verified offline first and its checkpoint "
        "must be consistent with the log's latest." + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = inclusion.add_argument_group("which entry (exactly one)")
    which.add_argument("--index", type=int, metavar="I", help="the entry's index")
    which.add_argument("--bundle", metavar="FILE", help="a .tlog-proof of the entry")
    which.add_argument("--request-id", metavar="ID", help="a receipt's request id (with --edge)")
    which.add_argument("--edge", metavar="E", help="the receipt's edge (with --request-id)")
    inclusion.add_argument(
        "--out", metavar="FILE", help="also write a .tlog-proof of the entry, built from tiles"
    )
    _add_online_flags(inclusion)
    _add_policy_flags(inclusion)
    inclusion.set_defaults(func=_run_inclusion)

    consistency = verbs.add_parser(
        "consistency",
        help="prove two checkpoints of a live log are one history (proof from its tiles)",
        description="OLD and NEW are each a signed checkpoint file, a tree size (the log's "
        "checkpoint of that size, from its history), or 'latest'. Both are verified; the "
        "consistency proof is computed from tiles authenticated against the larger. If no "
        "proof joins them, evidence is written and the exit code is 10." + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    consistency.add_argument("old", metavar="OLD")
    consistency.add_argument("new", metavar="NEW", nargs="?", default="latest")
    _add_online_flags(consistency)
    _add_policy_flags(consistency)
    consistency.set_defaults(func=_run_consistency)

    monitor = verbs.add_parser(
        "monitor",
        help="follow a log: every checkpoint consistent with the last; --full audits entries",
        description="Follow a log and persist the last verified checkpoint in --state. Each "
        "step verifies the new checkpoint and proves it consistent with the last one, from "
        "tiles. With --full, every entry is read from the entry bundles, re-hashed, and every "
        "receipt's signature checked against the edge-key registry as it stood at that index "
        "(receipts by unknown or revoked keys are reported, and kept in DIR/problems.jsonl). "
        "On a fork, DIR/fork-OLD-NEW.evidence is written and the exit code is 10. --once "
        "checks up to the current checkpoint and exits (1 if it found problems); otherwise "
        "it polls every --interval." + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    monitor.add_argument("--state", required=True, metavar="DIR", help="the monitor's state")
    monitor.add_argument("--full", action="store_true", help="audit every entry too")
    monitor.add_argument("--once", action="store_true", help="one step, then exit")
    monitor.add_argument(
        "--interval", type=float, default=10.0, metavar="S", help="seconds between steps"
    )
    monitor.add_argument(
        "--operator-key", action="append", default=[], metavar="VKEY",
        help="the operator's key: edge_key entries not signed by it are reported (repeatable)",
    )  # fmt: skip
    _add_online_flags(monitor, cache=False)
    _add_policy_flags(monitor)
    monitor.set_defaults(func=_run_monitor)

    evidence = verbs.add_parser(
        "evidence",
        help="check a fork evidence file offline (exit 10 if it proves a fork)",
        description="Check a fork evidence file (meterlog-fork-evidence/v2, or v1) written by "
        "monitor, inclusion, consistency, anchor, the witness or the edge submitter: every "
        "checkpoint in it signed by the log's key, one origin, and a consistency proof that "
        "leads to the newer tree's root and shows another root at the older size than the "
        "older commitment's. An anchor is evidence only when --rpc finds it on chain and "
        "--from names the log's anchoring address (anyone may call the contract with the "
        "log's origin hash); without them the output says what was not checked and the fork "
        "is NOT PROVEN. Exit 10 when it proves a fork, 1 when it does not, 2 usage error, "
        "3 the node is unavailable.",
    )
    evidence.add_argument("file", metavar="FILE")
    _add_policy_flags(evidence)
    evidence.set_defaults(func=_run_evidence)


def add_receipts_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``receipts get``: a buyer's receipts, verified on arrival."""
    receipts = subparsers.add_parser(
        "receipts", help="download your receipts from a log, verified, as proof bundles"
    )
    verbs = receipts.add_subparsers(dest="verb", required=True, metavar="VERB")
    get = verbs.add_parser(
        "get",
        help="download a consumer's (or job's) receipts as verified .tlog-proof bundles",
        description="Download every receipt of --consumer (and --job) with its proof bundle. "
        "Each is verified on arrival: the checkpoint under the policy and consistent with "
        "the log's latest (from tiles), the inclusion, the consumer and job, and the edge's "
        "signature by the key the log's own edge_key entry registers. Verified ones are "
        "written as OUT/receipt-<index>.tlog-proof and OUT/receipt-<index>.json (the entry "
        "as logged); failures are listed on stderr." + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("--consumer", required=True, metavar="C", help="the consumer id")
    get.add_argument("--job", metavar="J", help="only this job's receipts")
    get.add_argument("--out", required=True, metavar="DIR", help="where bundles are written")
    get.add_argument(
        "--operator-key", action="append", default=[], metavar="VKEY",
        help="the operator's key: edge keys must be registered by it (repeatable)",
    )  # fmt: skip
    _add_online_flags(get)
    _add_policy_flags(get)
    get.set_defaults(func=_run_receipts_get)


_EXIT_HELP = (
    "\n\nexit codes: 0 verified, 1 verification failed, 2 usage error, "
    "3 log unavailable, 10 log fork detected"
)
