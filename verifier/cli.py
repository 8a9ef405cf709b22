"""The ``meterlog verify ...`` commands: argument parsing and output for the verifier.

Owns the verifier's command-line surface and its exit codes; the checks themselves are in
:mod:`verifier.offline`. Human-readable lines go to stderr; with ``--json``, one JSON object
per checked file goes to stdout. Imports tlog and verifier only.

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
import json
import sys
from pathlib import Path

from tlog.errors import MalformedError
from tlog.note import ALG_COSIGNATURE_V1, Verifier, parse_vkey
from verifier.offline import Report, TrustPolicy, check_bundle, check_checkpoint

__all__ = [
    "EXIT_FAILED",
    "EXIT_FORK",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "add_verify_commands",
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
    log_keys = tuple(load_vkey(k) for k in args.key)
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
        required=True,
        metavar="VKEY",
        help="the log's verifier key, or a file holding it (repeatable: any one may sign)",
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
    """Register ``verify checkpoint`` and ``verify bundle`` under the ``verify`` noun."""
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


_EXIT_HELP = (
    "\n\nexit codes: 0 verified, 1 verification failed, 2 usage error, "
    "3 log unavailable, 10 log fork detected"
)
