"""``meterlog billing run|replay|dispute`` and ``meterlog verify statement``.

Owns the command-line side of billing: argument parsing, the trust policy a run reads the
log under, and how each outcome is reported and mapped onto the exit codes. The work is
billing's (billing.run, billing.replay). ``verify statement`` needs billing's engine to
recompute the amounts, and the verifier package may not import billing, so it is assembled
here, beside verifier.cli's ``verify`` commands, with their conventions (human lines on
stderr, ``--json`` on stdout, verifier.cli's exit codes), as cli/anchor.py does for ``verify
anchor``. Imports billing, tlog, verifier and cli.

Exit codes:

====  =====================================================================
0     done: the run logged its statements (or found nobody to pay), the
      replay gave the same bytes, the statement verified, the dispute is logged
1     verification failed, or the log refused (a bad checkpoint signature, an
      uncommitted range, other bytes on replay, a statement entry refused)
2     usage error
3     the log is unavailable
10    log fork detected
====  =====================================================================
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx

from billing.policy import BillingPolicy, parse_policy
from billing.replay import replay_statement, verify_statement_file
from billing.run import AppendRefusedError, RunReport, run_billing
from cli.anchor import _verify_parser
from cli.catalog import send_entry
from cli.client import LogUnavailableError, answer_json, error_text, get, log_url
from cli.keys import read_signing_key
from tlog.entry import Dispute, encode_entry, sign_dispute
from tlog.errors import MalformedError
from tlog.policy import parse_policy as parse_trust_policy
from tlog.statement import parse_statement, statement_digest
from verifier.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    UsageError,
    _add_online_flags,
    _add_policy_flags,
    _cache_dir,
    _client,
    _emit,
    _log_url,
    _online,
    _policy,
    load_vkey,
)
from verifier.client import LogClient
from verifier.offline import TrustPolicy

__all__ = ["add_billing_commands", "add_verify_statement_command"]


def _read(path: str, flag: str = "") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag + ' ' if flag else ''}{path}: {exc.strerror or exc}") from exc


def _billing_policy(path: str) -> BillingPolicy:
    try:
        return parse_policy(_read(path, "--policy"))
    except MalformedError as exc:
        raise UsageError(f"--policy {path}: {exc}") from exc


def _trust(args: argparse.Namespace) -> TrustPolicy:
    """The log's trust policy of a billing command: --key (the log's verifier keys) or a
    C2SP tlog-policy style --trust-policy file (keys, witnesses, quorum)."""
    if (args.trust_policy is None) == (not args.key):
        raise UsageError("give the log's key with --key VKEY, or a --trust-policy FILE")
    if args.trust_policy is not None:
        try:
            policy = parse_trust_policy(_read(args.trust_policy, "--trust-policy").decode())
        except (MalformedError, UnicodeDecodeError) as exc:
            raise UsageError(f"--trust-policy {args.trust_policy}: {exc}") from exc
        return TrustPolicy(origin=args.origin, policy=policy)
    return TrustPolicy(tuple(load_vkey(k) for k in args.key), origin=args.origin)


def _billing_client(args: argparse.Namespace) -> LogClient:
    url = _log_url(args.log)
    return LogClient(url, cache_dir=_cache_dir(args, url), timeout_s=args.timeout)


def _through(text: str) -> int | None:
    if text == "latest":
        return None
    if not text.isdigit() or str(int(text)) != text or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'latest' nor a tree size")
    return int(text)


def _say_run(report: RunReport) -> None:
    plan = report.plan
    print(
        f"billing: {plan.policy.currency} run over [{plan.start}, {plan.end}) of "
        f"{plan.origin}, period closed at {plan.period_end_ms} (the checkpoint's signed "
        f"time); {report.run.receipts} receipt(s) in range",
        file=sys.stderr,
    )
    for w in report.statements:
        t = w.document.totals
        where = f" logged at index {w.index}" if w.index is not None else " (not appended)"
        print(
            f"  {w.creator_id}: {len(w.document.lines)} line(s), gross {t.gross_minor}, fee "
            f"{t.fee_minor}, reserve {t.reserve_minor}, paid {t.paid_minor}, carried "
            f"{t.carry_out_minor}; {w.json_path.name} {w.digest[:19]}...{where}",
            file=sys.stderr,
        )
    for reason, count in sorted(report.run.unattributed.items()):
        print(f"  unattributed: {count} receipt(s) {reason}", file=sys.stderr)
    for index, consumer, amount in report.run.unallocated_revenue:
        print(f"  unallocated revenue: {amount} of {consumer} (entry {index})", file=sys.stderr)
    for index, problem in report.run.problems:
        print(f"  PROBLEM at index {index}: {problem}", file=sys.stderr)


@_online
def _run_run(args: argparse.Namespace) -> int:
    policy = _billing_policy(args.policy)
    trust = _trust(args)
    key = read_signing_key(Path(args.billing_key_file))
    with _billing_client(args) as client:
        try:
            report = run_billing(
                client, trust, policy, key, Path(args.out), through=args.through,
                append=not args.no_append, evidence_dir=Path(args.evidence_dir),
            )  # fmt: skip
        except AppendRefusedError as exc:
            print(f"FAILED  {exc}", file=sys.stderr)
            return EXIT_FAILED
    _say_run(report)
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    return EXIT_OK


@_online
def _run_replay(args: argparse.Namespace) -> int:
    trust = _trust(args)
    data = _read(args.statement)
    policy_data = None if args.policy is None else _read(args.policy, "--policy")
    with _billing_client(args) as client:
        replayed = replay_statement(
            client, trust, data, policy_data=policy_data, evidence_dir=Path(args.evidence_dir)
        )
    if args.out is not None:
        Path(args.out).write_bytes(replayed.produced)
    digest = statement_digest(data)
    if args.json:
        produced = statement_digest(replayed.produced)
        print(json.dumps({"ok": replayed.same, "digest": digest, "replayed": produced}))
    if replayed.same:
        print(
            f"OK  {args.statement}: replayed from the log and the policy, the same "
            f"{len(data)} bytes ({digest})",
            file=sys.stderr,
        )
        return EXIT_OK
    at = replayed.first_difference()
    print(
        f"FAILED  {args.statement}: the replay gives other bytes from byte {at} on "
        f"({statement_digest(replayed.produced)}, not {digest})",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _run_dispute(args: argparse.Namespace) -> int:
    try:
        document = parse_statement(_read(args.statement))
    except MalformedError as exc:
        raise UsageError(f"{args.statement}: not a statement: {exc}") from exc
    if not 1 <= args.line <= len(document.lines):
        raise UsageError(f"--line {args.line}: the statement has {len(document.lines)} line(s)")
    key = read_signing_key(Path(args.key_file))
    if key.name != document.creator_id:
        raise UsageError(
            f"--key-file: the key is {key.name}'s, the statement {document.creator_id}'s"
        )
    digest = statement_digest(_read(args.statement))
    latest = _latest_dispute(args, document.creator_id, digest)
    if isinstance(latest, int):
        return latest
    if args.withdraw:
        if latest is None or latest[1] is not None:
            print(
                f"meterlog: line {args.line} of {args.statement} has no open dispute to withdraw",
                file=sys.stderr,
            )
            return EXIT_FAILED
        follows: int | None = latest[0]  # the open it closes
    else:
        follows = None if latest is None else latest[1]  # the line's latest close
    try:
        dispute = sign_dispute(
            Dispute(
                action="close" if args.withdraw else "open", creator_id=document.creator_id,
                statement=digest, line=args.line, reason=args.reason, follows=follows,
            ),
            key,
        )  # fmt: skip
    except MalformedError as exc:
        raise UsageError(str(exc)) from exc
    what = f"dispute of line {args.line}" + (" (withdrawn)" if args.withdraw else "")
    return send_entry(args, "/v1/disputes", encode_entry(dispute), what)


def _latest_dispute(
    args: argparse.Namespace, creator_id: str, digest: str
) -> tuple[int, int | None] | int | None:
    """The (opened_index, closed_index) of the latest dispute of ``args.line`` as the log
    lists it (None: the line was never disputed), which a new dispute entry must follow;
    or the exit code when the log cannot say."""
    query = urlencode({"creator": creator_id, "statement": digest})
    url = f"{log_url(args.log)}/v1/disputes?{query}"
    try:
        with httpx.Client(timeout=args.timeout) as client:
            response = get(url, client)
            if response.status_code != 200:
                print(
                    f"meterlog: the log refused the dispute list (HTTP {response.status_code}): "
                    f"{error_text(response)}",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            listed = answer_json(response).get("disputes")
    except LogUnavailableError as exc:
        print(f"meterlog: the log is unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    found: tuple[int, int | None] | None = None
    for row in listed if isinstance(listed, list) else []:
        if not isinstance(row, dict) or row.get("line") != args.line:
            continue
        opened, closed = row.get("opened_index"), row.get("closed_index")
        if not isinstance(opened, int) or not (closed is None or isinstance(closed, int)):
            print(f"meterlog: the log's dispute list is malformed: {row!r}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if found is None or opened > found[0]:
            found = (opened, closed)
    return found


def _run_verify_statement(args: argparse.Namespace) -> int:
    @_online
    def run(args: argparse.Namespace) -> int:
        trust = _policy(args)
        billing_keys = [load_vkey(k, "--billing-key") for k in args.billing_key]
        policy_data = None if args.billing_policy is None else _read(args.billing_policy)
        status = EXIT_OK
        with _client(args) as client:
            for path in args.files:
                report = verify_statement_file(
                    client, trust, _read(path), policy_data=policy_data,
                    billing_keys=billing_keys, evidence_dir=Path(args.evidence_dir),
                    subject=path,
                )  # fmt: skip
                _emit(report, args.json)
                if not report.ok:
                    status = EXIT_FAILED
        return status

    return run(args)


def _add_trust_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key", action="append", default=[], metavar="VKEY",
        help="the log's verifier key, or a file holding it (repeatable: any one may sign)",
    )  # fmt: skip
    parser.add_argument(
        "--trust-policy", metavar="FILE",
        help="or: a C2SP tlog-policy style file of the log's keys, witnesses and quorum",
    )  # fmt: skip
    parser.add_argument("--origin", help="require this checkpoint origin")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")


def add_billing_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``billing run``, ``billing replay`` and ``billing dispute``."""
    billing = subparsers.add_parser(
        "billing",
        help="pay creators from committed log ranges; replay and dispute statements",
        description="Billing reads the log like an auditor (verified checkpoint, entries "
        "authenticated against its root) and computes one statement per creator. " + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = billing.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser(
        "run",
        help="bill the range since the last run, up to a verified checkpoint",
        description="The range starts where the currency's last statement in the log ended "
        "and ends at the checkpoint's size (--through latest, or an earlier size of the "
        "log's history); the period closes at the checkpoint's signed time. Writes one "
        "statement (canonical JSON) and CSV per creator, and run.json, into --out; signs a "
        "statement entry for each with the billing key and appends them to the log." + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--policy", required=True, metavar="FILE", help="the billing policy (TOML)")
    run.add_argument(
        "--billing-key-file", required=True, metavar="FILE",
        help="the billing key (meterlog keygen); the log must list it in its --billing-keys",
    )  # fmt: skip
    run.add_argument(
        "--through", type=_through, default=None, metavar="latest|SIZE",
        help="bill up to this tree size (default: the latest checkpoint's)",
    )  # fmt: skip
    run.add_argument("--out", required=True, metavar="DIR", help="where statements are written")
    run.add_argument(
        "--no-append", action="store_true", help="write the statements, log nothing (a dry run)"
    )
    _add_online_flags(run)
    _add_trust_flags(run)
    run.set_defaults(func=_run_run)

    replay = verbs.add_parser(
        "replay",
        help="re-derive a statement from the log and the policy: the same bytes, or exit 1",
        description="Verify the statement's checkpoint and prove it consistent with the "
        "log's latest; read every entry below it from tiles; run the engine with the "
        "statement's policy (or --policy, which must have its digest); compare the bytes."
        + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("statement", metavar="STATEMENT")
    replay.add_argument("--policy", metavar="FILE", help="the policy file (default: embedded)")
    replay.add_argument("--out", metavar="FILE", help="also write the replayed bytes here")
    _add_online_flags(replay)
    _add_trust_flags(replay)
    replay.set_defaults(func=_run_replay)

    dispute = verbs.add_parser(
        "dispute",
        help="dispute a line of your statement (a dispute entry signed by your key)",
        description="Log a creator-signed dispute entry naming the statement's digest and a "
        "line, and the line's latest dispute entry it follows (read from the log's "
        "/v1/disputes). The next run lists it, and the statement's reserve is not released "
        "while it is open. --withdraw closes it. Exit codes: 0 logged, 1 refused by the log, "
        "2 usage error, 3 log unavailable.",
    )
    dispute.add_argument("statement", metavar="STATEMENT")
    dispute.add_argument("--line", required=True, type=int, metavar="N", help="the line, from 1")
    dispute.add_argument("--reason", required=True, metavar="TEXT", help="why (printable ASCII)")
    dispute.add_argument(
        "--key-file", required=True, metavar="FILE", help="the creator's signing key"
    )
    dispute.add_argument("--withdraw", action="store_true", help="close your open dispute")
    dispute.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    dispute.add_argument("--timeout", type=float, default=30.0, metavar="S")
    dispute.add_argument("--json", action="store_true", help="print the log's answer")
    dispute.set_defaults(func=_run_dispute)


def add_verify_statement_command(verify: argparse.ArgumentParser) -> None:
    """Register ``verify statement`` beside verifier.cli's ``verify`` commands."""
    parser = _verify_parser(verify).add_parser(
        "statement",
        help="check a billing statement: in the log, every receipt proven, amounts recomputed",
        description="Check that the statement is in the log (its entry read from tiles under "
        "the latest checkpoint, signed by its billing key); that its checkpoint is the log's "
        "and consistent with the latest; that every receipt it counts is in the log under its "
        "checkpoint, signed by an edge key the log registered and valid when served; and "
        "recompute it from the log and its policy: the same bytes." + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="STATEMENT")
    parser.add_argument(
        "--billing-policy", metavar="FILE",
        help="the billing policy file (default: the text the statement embeds; its digest must "
        "match either way)",
    )  # fmt: skip
    parser.add_argument(
        "--billing-key", action="append", default=[], metavar="VKEY",
        help="pin the billing key (repeatable); without it that check is reported as not done",
    )  # fmt: skip
    _add_online_flags(parser)
    _add_policy_flags(parser)
    parser.set_defaults(func=_run_verify_statement)


_EXIT_HELP = (
    "\n\nexit codes: 0 done, 1 verification failed or refused by the log, 2 usage error, "
    "3 log unavailable, 10 log fork detected"
)
