"""``meterlog keygen``: a new Ed25519 note key, written to a file, its verifier key printed.

Owns writing signer keys to disk (mode 0600, never over an existing file) and reading them
back. The key formats are tlog.note's; the randomness is the operating system's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tlog.errors import MalformedError
from tlog.note import SigningKey, format_skey, format_vkey, parse_skey
from verifier.cli import EXIT_OK, UsageError

__all__ = ["add_keygen_command", "generate_key", "read_signing_key", "write_signing_key"]


def generate_key(name: str) -> SigningKey:
    """A fresh key from the operating system's random source."""
    try:
        return SigningKey(name, os.urandom(32))
    except MalformedError as exc:
        raise UsageError(f"--name {name!r}: {exc.reason}") from exc


def write_signing_key(key: SigningKey, path: Path) -> None:
    """Write the signer key string to a new file readable by its owner only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{path} already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(format_skey(key) + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_signing_key(path: Path) -> SigningKey:
    try:
        return parse_skey(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    except MalformedError as exc:
        raise UsageError(f"{path}: not a signer key: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    key = generate_key(args.name)
    write_signing_key(key, Path(args.out))
    vkey = format_vkey(key.verifier())
    if args.vkey_out:
        Path(args.vkey_out).write_text(vkey + "\n", encoding="utf-8")
    print(f"wrote the signing key for {key.name} to {args.out} (keep it secret)", file=sys.stderr)
    print(vkey)
    return EXIT_OK


def add_keygen_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create an Ed25519 signing key and print its verifier key",
        description="Create an Ed25519 note signing key (for a log, an edge, an operator or a "
        "witness), write it to --out with mode 0600, and print its C2SP verifier key "
        "(name+keyid+base64) on stdout.",
    )
    parser.add_argument(
        "--name", required=True, help="the key name, e.g. the log's origin or the edge id"
    )
    parser.add_argument("--out", required=True, help="file for the signing key (must not exist)")
    parser.add_argument("--vkey-out", help="also write the verifier key to this file")
    parser.set_defaults(func=_run)
