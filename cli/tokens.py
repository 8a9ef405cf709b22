"""``meterlog token issue`` and ``meterlog token verify``: the marketplace's access tokens.

Owns the command line of tlog.token: ``issue`` signs a scoped token for a consumer with the
marketplace's key (from ``meterlog keygen``) and prints it; ``verify`` checks one against
the marketplace's verifier key, as an edge would, and prints what it grants. Imports tlog,
verifier.cli (exit codes, key loading) and cli.keys.

Exit codes of ``verify``: 0 valid now, 1 invalid (malformed, bad signature, unknown key,
expired or not yet valid), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cli.keys import read_signing_key
from tlog.entry import SCOPES
from tlog.errors import MalformedError, VerificationError
from tlog.token import AccessToken, format_token, parse_token, sign_token, verify_token
from verifier.cli import EXIT_FAILED, EXIT_OK, UsageError, load_vkey

__all__ = ["add_token_commands", "issue_token"]

_FLAGS = {
    "token.token_id": "--token-id",
    "token.consumer_id": "--consumer",
    "token.job_id": "--job-id",
    "token.scope": "--scope",
    "token.expires_at_ms": "--ttl",
    "token.content": "--content",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def issue_token(args: argparse.Namespace, now_ms: int) -> AccessToken:
    """The signed token ``token issue`` prints (``now_ms``: its issued_at_ms)."""
    key = read_signing_key(Path(args.key_file))
    if args.ttl <= 0:
        raise UsageError(f"--ttl {args.ttl}: must be a positive number of seconds")
    content = tuple(sorted(set(args.content))) if args.content else None
    try:
        token = AccessToken(
            issuer=key.name,
            token_id=args.token_id or os.urandom(12).hex(),
            consumer_id=args.consumer,
            scope=args.scope,
            issued_at_ms=now_ms,
            expires_at_ms=now_ms + args.ttl * 1000,
            job_id=args.job_id,
            content=content,
        )
        return sign_token(token, key)
    except MalformedError as exc:
        flag = _FLAGS.get(exc.field.partition("[")[0], exc.field)
        raise UsageError(f"{flag}: {exc.reason}") from exc


def _describe(token: AccessToken) -> dict[str, object]:
    return {
        "issuer": f"{token.issuer}+{token.key_id}",
        "token_id": token.token_id,
        "consumer_id": token.consumer_id,
        "scope": token.scope,
        "job_id": token.job_id,
        "content": None if token.content is None else list(token.content),
        "issued_at_ms": token.issued_at_ms,
        "expires_at_ms": token.expires_at_ms,
    }


def _run_issue(args: argparse.Namespace) -> int:
    token = issue_token(args, _now_ms())
    text = format_token(token)
    if args.json:
        print(json.dumps({"token": text, **_describe(token)}, sort_keys=True))
    else:
        print(text)
    content = "any content" if token.content is None else f"{len(token.content)} content id(s)"
    job = f" for job {token.job_id}" if token.job_id else ""
    print(
        f"issued {token.scope} token {token.token_id} to {token.consumer_id}{job} "
        f"({content}), valid for {args.ttl} s, signed by {token.issuer}+{token.key_id}",
        file=sys.stderr,
    )
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    keys = [load_vkey(k, "--key") for k in args.key]
    text = sys.stdin.read().strip() if args.text == "-" else args.text.strip()
    now_ms = _now_ms() if args.now_ms is None else args.now_ms
    try:
        token = parse_token(text)
        verify_token(token, keys, now_ms=now_ms, leeway_ms=args.leeway_ms)
    except (MalformedError, VerificationError) as exc:
        print(f"INVALID token: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_describe(token), sort_keys=True))
    left_s = (token.expires_at_ms - now_ms) // 1000
    print(
        f"OK {token.scope} token {token.token_id} for {token.consumer_id}, "
        f"signed by {token.issuer}+{token.key_id}, expires in {left_s} s",
        file=sys.stderr,
    )
    return EXIT_OK


def _positive(text: str) -> int:
    if not text.isdigit() or str(int(text)) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal integer")
    return int(text)


def add_token_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``token issue`` and ``token verify`` under the ``token`` noun."""
    token = subparsers.add_parser(
        "token",
        help="issue or check the marketplace's scoped access tokens",
        description="Access tokens grant a consumer the right to fetch content with a scope "
        "(training, inference, preview) until they expire. Edges verify them with the "
        "marketplace's verifier key.",
    )
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")

    issue = verbs.add_parser(
        "issue",
        help="sign an access token with the marketplace key and print it",
        description="Sign an access token with the marketplace's key (from meterlog keygen; "
        "its name becomes the token's issuer) and print it on stdout, ready for "
        "'Authorization: Bearer <token>'.",
    )
    issue.add_argument("--key-file", required=True, metavar="FILE", help="the marketplace key")
    issue.add_argument("--consumer", required=True, metavar="ID", help="who may fetch")
    issue.add_argument("--scope", required=True, choices=SCOPES, help="what for")
    issue.add_argument("--job-id", metavar="ID", help="the consumer's job, if any")
    issue.add_argument("--token-id", metavar="ID", help="default: random (12 bytes, hex)")
    issue.add_argument(
        "--ttl", type=_positive, default=3600, metavar="S", help="seconds valid (default: 3600)"
    )
    issue.add_argument(
        "--content",
        action="append",
        metavar="sha256:HEX",
        help="allow only this content id (repeat for more); default: any content",
    )
    issue.add_argument("--json", action="store_true", help="print the token and its fields as JSON")
    issue.set_defaults(func=_run_issue)

    verify = verbs.add_parser(
        "verify",
        help="check a token against the marketplace's verifier key",
        description="Check a token's signature and validity window, as an edge does. "
        "Exit codes: 0 valid, 1 invalid, 2 usage error.",
    )
    verify.add_argument("text", metavar="TOKEN", help="the token, or - to read it from stdin")
    verify.add_argument(
        "--key",
        required=True,
        action="append",
        metavar="VKEY",
        help="a marketplace verifier key, or a file holding it (repeat for more)",
    )
    verify.add_argument(
        "--now-ms", type=_positive, metavar="MS", help="check at this time (default: now)"
    )
    verify.add_argument(
        "--leeway-ms", type=_positive, default=0, metavar="MS", help="clock skew allowed"
    )
    verify.add_argument("--json", action="store_true", help="print the token's fields as JSON")
    verify.set_defaults(func=_run_verify)
