"""``meterlog edge register`` and ``meterlog edge revoke``: the operator's edge-key requests.

Owns the command-line side of ``POST /v1/admin/edge-keys``: it builds the request (the log
signs the ``edge_key`` entry with its operator key and logs it), sends it with the operator's
bearer token, and reports the answer. The edge's own verbs (submit, run, status, ...) are in
cli.edge_node, under the same noun. Imports tlog, verifier.cli and cli.

Exit codes: 0 logged, 1 the log refused (bad token, malformed or unknown key), 2 usage
error, 3 the log is unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

from cli.client import LogUnavailableError, answer_json, error_text, log_url, post_for_entry
from cli.edge_node import add_edge_node_commands
from cli.keys import read_signing_key
from tlog.note import ALG_ED25519, Verifier, format_vkey
from verifier.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, UsageError, load_vkey

__all__ = ["add_edge_commands"]

ADMIN_PATH = "/v1/admin/edge-keys"
EDGE_KEYS_PATH = "/v1/edge-keys"


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path}: {exc}") from exc
    if not token or any(c.isspace() for c in token):
        raise UsageError(f"--token-file {path}: does not hold one token")
    return token


def _edge_vkey(args: argparse.Namespace) -> Verifier:
    if args.key_file is not None:
        verifier = read_signing_key(Path(args.key_file)).verifier()
    else:
        verifier = load_vkey(args.key)
    if verifier.alg != ALG_ED25519:
        raise UsageError(f"the edge key {verifier.name} is not an Ed25519 (type 0x01) key")
    if verifier.name != args.edge:
        raise UsageError(f"--edge {args.edge}: the key is named {verifier.name!r}; they must match")
    return verifier


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _send(args: argparse.Namespace, request: dict[str, object]) -> int:
    url = log_url(args.log) + ADMIN_PATH
    body = json.dumps(request, sort_keys=True).encode()
    token = _read_token(args.token_file)
    answer = post_for_entry(
        url, body, f"{request['action']} request", token=token, timeout_s=args.timeout,
        as_json=args.json,
    )  # fmt: skip
    if isinstance(answer, int):
        return answer
    if answer.get("status") != "logged":
        print(f"meterlog: the log answered {answer.get('status')!r}: {answer}", file=sys.stderr)
        return EXIT_FAILED
    window = f"from {request['valid_from_ms']}"
    if "valid_until_ms" in request:
        window += f" until {request['valid_until_ms']}"
    print(
        f"{request['action']}: edge {request['edge']} key {request['key']} "
        f"(valid {window} ms) logged at index {answer.get('index')}",
        file=sys.stderr,
    )
    return EXIT_OK


def _run_register(args: argparse.Namespace) -> int:
    verifier = _edge_vkey(args)
    valid_from_ms = _now_ms() if args.valid_from_ms is None else args.valid_from_ms
    request: dict[str, object] = {
        "action": "register",
        "edge": args.edge,
        "key": format_vkey(verifier),
        "valid_from_ms": valid_from_ms,
    }
    return _send(args, request)


def _registered_from_ms(args: argparse.Namespace, verifier: Verifier) -> int:
    """The key's current ``valid_from_ms`` in the log (GET /v1/edge-keys), which a revocation
    keeps: the latest statement about a key replaces its whole window."""
    url = log_url(args.log) + EDGE_KEYS_PATH
    try:
        response = httpx.get(url, timeout=args.timeout)
    except httpx.TransportError as exc:
        raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise LogUnavailableError(f"{url}: HTTP {response.status_code}: {error_text(response)}")
    records = answer_json(response).get("edge_keys")
    wanted = format_vkey(verifier)
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict) and record.get("key") == wanted:
            valid_from_ms = record.get("valid_from_ms")
            if isinstance(valid_from_ms, int) and not isinstance(valid_from_ms, bool):
                return valid_from_ms
    raise UsageError(f"--key {wanted}: not registered in the log at {args.log}")


def _run_revoke(args: argparse.Namespace) -> int:
    verifier = _edge_vkey(args)
    if args.valid_from_ms is None:
        try:
            valid_from_ms = _registered_from_ms(args, verifier)
        except LogUnavailableError as exc:
            print(f"meterlog: the log is unavailable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    else:
        valid_from_ms = args.valid_from_ms
    if args.valid_until_ms <= valid_from_ms:
        raise UsageError(
            f"--valid-until-ms {args.valid_until_ms}: must be after the key's "
            f"valid_from_ms {valid_from_ms}"
        )
    request: dict[str, object] = {
        "action": "revoke",
        "edge": args.edge,
        "key": format_vkey(verifier),
        "valid_from_ms": valid_from_ms,
        "valid_until_ms": args.valid_until_ms,
    }
    return _send(args, request)


def _ms(text: str) -> int:
    if not text.isdigit() or str(int(text)) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Unix time in milliseconds")
    return int(text)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    parser.add_argument(
        "--token-file",
        required=True,
        metavar="FILE",
        help="the operator's bearer token (the server's DATA_DIR/operator.token)",
    )
    parser.add_argument("--edge", required=True, metavar="ID", help="the edge id (its key name)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout (default: 30)"
    )
    parser.add_argument("--json", action="store_true", help="print the log's answer on stdout")


def add_edge_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edge register`` and ``edge revoke`` under the ``edge`` noun."""
    edge = subparsers.add_parser(
        "edge",
        help="run an edge: register its key, spool and submit receipts, serve a demo origin",
        description="The operator's requests to a running log (register, revoke: each "
        "becomes an edge_key entry, signed by the log's operator key), and the edge's own "
        "commands (submit, run, status, requeue, prune, catalog, serve-demo). " + _EXIT_HELP,
    )
    verbs = edge.add_subparsers(dest="verb", required=True, metavar="VERB")

    register = verbs.add_parser(
        "register",
        help="register an edge key, so the log accepts receipts it signs",
        description="Register an edge's key from --valid-from-ms on. " + _EXIT_HELP,
    )
    _add_common(register)
    key = register.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--key-file", metavar="FILE", help="the edge's signing key (from meterlog keygen)"
    )
    key.add_argument("--key", metavar="VKEY", help="or: its verifier key, or a file holding it")
    register.add_argument(
        "--valid-from-ms",
        type=_ms,
        metavar="MS",
        help="the first served_at_ms the key may sign (default: now)",
    )
    register.set_defaults(func=_run_register)

    revoke = verbs.add_parser(
        "revoke",
        help="end an edge key's validity at --valid-until-ms",
        description="Revoke an edge key: receipts it signs with served_at_ms at or after "
        "--valid-until-ms are refused from then on. " + _EXIT_HELP,
    )
    _add_common(revoke)
    revoke.add_argument(
        "--key", required=True, metavar="VKEY", help="the edge's verifier key, or a file"
    )
    revoke.add_argument(
        "--valid-until-ms", required=True, type=_ms, metavar="MS", help="the end of its window"
    )
    revoke.add_argument(
        "--valid-from-ms",
        type=_ms,
        metavar="MS",
        help="the start of its window (default: as registered, read from the log)",
    )
    revoke.set_defaults(key_file=None, func=_run_revoke)
    add_edge_node_commands(verbs)


_EXIT_HELP = "Exit codes: 0 logged, 1 refused by the log, 2 usage error, 3 log unavailable."
