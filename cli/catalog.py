"""``meterlog creator add``, ``meterlog manifest publish|withdraw``, ``meterlog revenue declare``.

Owns the command-line side of the catalog in the log: the operator registers a creator's key
and payout currency (``POST /v1/admin/creators``, the log signs a ``creator`` entry with its
operator key) and declares a buyer's revenue (``POST /v1/admin/revenue``); a creator signs
and submits manifest versions with its own key (``POST /v1/manifests``, no token: the log
checks the signature against the key it registered). Each prints the log's answer. Imports
tlog, verifier.cli and cli.

Exit codes: 0 logged, 1 the log refused (bad token, an unknown creator, a bad signature,
a version that is not new), 2 usage error, 3 the log is unavailable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cli.client import log_url, post_for_entry
from cli.edge import _read_token as read_token
from cli.keys import read_signing_key
from tlog.entry import TERMS, Manifest, encode_entry, sign_manifest
from tlog.errors import MalformedError
from tlog.note import ALG_ED25519, Verifier, format_vkey
from verifier.cli import EXIT_OK, UsageError, load_vkey

__all__ = ["add_catalog_commands", "send_entry"]


def send_entry(
    args: argparse.Namespace, path: str, body: bytes, what: str, *, token: str | None = None
) -> int:
    """POST ``body`` to the log's ``path``; report the answer (``what`` names it)."""
    url = log_url(args.log) + path
    answer = post_for_entry(url, body, what, token=token, timeout_s=args.timeout,
                            as_json=args.json)  # fmt: skip
    if isinstance(answer, int):
        return answer
    print(f"{what}: {answer.get('status')} at index {answer.get('index')}", file=sys.stderr)
    return EXIT_OK


def _creator_key(args: argparse.Namespace) -> Verifier:
    if args.key_file is not None:
        key = read_signing_key(Path(args.key_file)).verifier()
    else:
        key = load_vkey(args.key)
    if key.alg != ALG_ED25519:
        raise UsageError(f"the creator key {key.name} is not an Ed25519 (type 0x01) key")
    if args.creator is not None and key.name != args.creator:
        raise UsageError(f"--creator {args.creator}: the key is named {key.name!r}")
    return key


def _run_creator_add(args: argparse.Namespace) -> int:
    key = _creator_key(args)
    body = {"creator_id": key.name, "key": format_vkey(key), "currency": args.currency}
    token = read_token(args.token_file)
    return send_entry(
        args, "/v1/admin/creators", json.dumps(body).encode(), f"creator {key.name}",
        token=token,
    )  # fmt: skip


def _digest_of_file(path: str, flag: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from exc
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _terms(text: str) -> tuple[tuple[str, str], ...]:
    """``name=decimal,...`` (names from tlog.entry.TERMS) as sorted pairs."""
    pairs = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in TERMS:
            raise UsageError(f"--terms {text}: each term is NAME=DECIMAL, NAME one of {TERMS}")
        pairs[name] = value.strip()
    return tuple(sorted(pairs.items()))


def _manifest(args: argparse.Namespace, action: str) -> Manifest:
    key = read_signing_key(Path(args.key_file))
    if args.content_file is not None:
        content_id = _digest_of_file(args.content_file, "--content-file")
    elif args.content_id is not None:
        content_id = args.content_id
    else:
        raise UsageError("give --content-id or --content-file")
    if getattr(args, "manifest_file", None) is not None:
        digest = _digest_of_file(args.manifest_file, "--manifest-file")
    elif args.manifest is not None:
        digest = args.manifest
    else:
        raise UsageError("give --manifest (a digest) or --manifest-file")
    fields: dict[str, object] = {
        "action": action,
        "creator_id": key.name,
        "content_id": content_id,
        "version": args.version,
        "manifest": digest,
    }
    if action == "publish":
        scopes = sorted({s.strip() for s in args.scopes.split(",") if s.strip()})
        fields.update(scopes=tuple(scopes), terms=_terms(args.terms), license=args.license)
    try:
        return sign_manifest(Manifest(**fields), key)  # type: ignore[arg-type]
    except MalformedError as exc:
        raise UsageError(str(exc)) from exc


def _run_manifest(args: argparse.Namespace) -> int:
    manifest = _manifest(args, args.verb)
    what = f"{args.verb} of {manifest.content_id} version {manifest.version}"
    return send_entry(args, "/v1/manifests", encode_entry(manifest), what)


def _run_revenue(args: argparse.Namespace) -> int:
    body = {
        "consumer_id": args.consumer,
        "currency": args.currency,
        "amount_minor": args.amount_minor,
        "period_start_ms": args.period_start_ms,
        "period_end_ms": args.period_end_ms,
        "reference": args.reference,
    }
    token = read_token(args.token_file)
    what = f"revenue of {args.consumer} ({args.reference})"
    return send_entry(args, "/v1/admin/revenue", json.dumps(body).encode(), what, token=token)


def _whole(text: str) -> int:
    if not text.isdigit() or str(int(text)) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _common(parser: argparse.ArgumentParser, *, token: bool) -> None:
    parser.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    if token:
        parser.add_argument(
            "--token-file", required=True, metavar="FILE",
            help="the operator's bearer token (the server's DATA_DIR/operator.token)",
        )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout (default: 30)"
    )
    parser.add_argument("--json", action="store_true", help="print the log's answer on stdout")


def add_catalog_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``creator add``, ``manifest publish|withdraw`` and ``revenue declare``."""
    creator = subparsers.add_parser(
        "creator", help="register a creator's key and payout currency in a running log"
    )
    verbs = creator.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser(
        "add",
        help="register a creator (or rotate its key, or change its currency)",
        description="The operator registers a creator: a creator entry, signed by the log's "
        "operator key, binds the creator id (the key's name) to its Ed25519 key and payout "
        "currency. Manifests and disputes must then be signed by that key. " + _EXIT_HELP,
    )
    _common(add, token=True)
    key = add.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", metavar="VKEY", help="the creator's verifier key, or a file")
    key.add_argument("--key-file", metavar="FILE", help="or: its signing key (meterlog keygen)")
    add.add_argument("--creator", metavar="ID", help="require the key to be named this")
    add.add_argument("--currency", required=True, metavar="CODE", help="payout currency (ISO)")
    add.set_defaults(func=_run_creator_add)

    manifest = subparsers.add_parser(
        "manifest", help="publish or withdraw a version of your content, signed by your key"
    )
    verbs = manifest.add_subparsers(dest="verb", required=True, metavar="VERB")
    publish = verbs.add_parser(
        "publish",
        help="publish a manifest version: licensed scopes, payout terms, license URI",
        description="Sign a manifest entry with the creator's key (named after the creator "
        "id the operator registered) and submit it. Receipts name the manifest digest; "
        "billing pays by the terms of the version a receipt names. " + _EXIT_HELP,
    )
    withdraw = verbs.add_parser(
        "withdraw",
        help="withdraw a published version for new use (the past is not rewritten)",
        description="Receipts served from the withdrawal's logged time on that name this "
        "version are not paid; receipts served before it still are. " + _EXIT_HELP,
    )
    for parser in (publish, withdraw):
        _common(parser, token=False)
        parser.add_argument(
            "--key-file", required=True, metavar="FILE", help="the creator's signing key"
        )
        content = parser.add_mutually_exclusive_group(required=True)
        content.add_argument("--content-id", metavar="sha256:HEX", help="the content's digest")
        content.add_argument("--content-file", metavar="PATH", help="or: the content itself")
        parser.add_argument(
            "--version", required=True, type=_whole, metavar="N", help="the version, from 1"
        )
        parser.set_defaults(func=_run_manifest)
    digest = publish.add_mutually_exclusive_group(required=True)
    digest.add_argument("--manifest", metavar="sha256:HEX", help="the manifest document's digest")
    digest.add_argument("--manifest-file", metavar="FILE", help="or: the manifest document")
    withdraw.add_argument(
        "--manifest", required=True, metavar="sha256:HEX", help="the withdrawn version's digest"
    )
    publish.add_argument(
        "--scopes",
        required=True,
        metavar="LIST",
        help="licensed scopes: training,inference,preview",
    )
    publish.add_argument(
        "--terms", required=True, metavar="NAME=DEC,...",
        help=f"payout terms, decimals in major units or shares; names: {', '.join(TERMS)}",
    )  # fmt: skip
    publish.add_argument("--license", required=True, metavar="URI", help="the license's URI")

    revenue = subparsers.add_parser("revenue", help="declare a buyer's revenue (operator)")
    verbs = revenue.add_subparsers(dest="verb", required=True, metavar="VERB")
    declare = verbs.add_parser(
        "declare",
        help="log a buyer's declared revenue for a period, signed by the operator key",
        description="Revenue-share terms split it over the buyer's billable use in the "
        "billing run whose range holds the declaration. " + _EXIT_HELP,
    )
    _common(declare, token=True)
    declare.add_argument("--consumer", required=True, metavar="ID", help="the buyer")
    declare.add_argument("--currency", required=True, metavar="CODE")
    declare.add_argument("--amount-minor", required=True, type=_whole, metavar="N")
    declare.add_argument("--period-start-ms", required=True, type=_whole, metavar="MS")
    declare.add_argument("--period-end-ms", required=True, type=_whole, metavar="MS")
    declare.add_argument(
        "--reference", required=True, metavar="REF", help="the buyer's report (unique)"
    )
    declare.set_defaults(func=_run_revenue)


_EXIT_HELP = "Exit codes: 0 logged, 1 refused by the log, 2 usage error, 3 log unavailable."
