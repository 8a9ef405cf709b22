"""``meterlog``: one command with noun-verb subcommands.

Owns the top-level parser and the dispatch. Subcommands return an exit code; a
:class:`~verifier.cli.UsageError` becomes exit code 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli.anchor import (
    add_anchor_commands,
    add_verify_anchor_command,
    add_verify_evidence_chain_flags,
)
from cli.billing import add_billing_commands, add_verify_statement_command
from cli.catalog import add_catalog_commands
from cli.demo import add_demo_command
from cli.edge import add_edge_commands
from cli.keys import add_keygen_command
from cli.receipt import add_receipt_commands
from cli.tokens import add_token_commands
from cli.witness import add_witness_commands
from log_server.cli import add_serve_command
from verifier.cli import EXIT_USAGE, UsageError, add_receipts_commands, add_verify_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterlog",
        description="meterlog: a transparency log of signed usage receipts that pays creators.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_keygen_command(commands)
    add_serve_command(commands)
    add_edge_commands(commands)
    add_receipt_commands(commands)
    add_token_commands(commands)
    add_verify_commands(commands)
    add_receipts_commands(commands)
    add_witness_commands(commands)
    add_verify_anchor_command(commands.choices["verify"])
    add_verify_evidence_chain_flags(commands.choices["verify"])
    add_verify_statement_command(commands.choices["verify"])
    add_catalog_commands(commands)
    add_billing_commands(commands)
    add_anchor_commands(commands)
    add_demo_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except UsageError as exc:
        print(f"meterlog: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status


if __name__ == "__main__":
    sys.exit(main())
