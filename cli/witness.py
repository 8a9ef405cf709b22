"""``meterlog witness serve``: run a C2SP tlog-witness for the logs you audit.

Owns the witness's command line: its signing key (a ``meterlog keygen`` file; the witness
cosigns as type 0x04 with it), the logs it witnesses (``--log VKEY``, the origin being the
key's name as meterlog and the witness network do; or a ``--policy`` file's ``log`` lines),
its SQLite state file, binding the socket and running uvicorn. The app is
``verifier.witness``. Imports verifier, tlog, cli.keys; uvicorn and starlette only to serve.

Exit codes: 0 stopped cleanly, 2 usage error, 3 the address cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

from cli.keys import read_signing_key
from log_server.sockets import listen
from tlog.errors import MalformedError
from tlog.note import ALG_COSIGNATURE_V1, ALG_ED25519, Verifier, format_vkey
from tlog.policy import parse_policy
from verifier.cli import EXIT_OK, EXIT_UNAVAILABLE, UsageError, load_vkey

__all__ = ["add_witness_commands"]


def _logs(args: argparse.Namespace) -> dict[str, list[Verifier]]:
    keys = [load_vkey(v, "--log") for v in args.log]
    if args.policy is not None:
        try:
            text = Path(args.policy).read_text(encoding="utf-8")
            keys += [log.key for log in parse_policy(text).logs]
        except (OSError, UnicodeDecodeError, MalformedError) as exc:
            raise UsageError(f"--policy {args.policy}: {exc}") from exc
    if not keys:
        raise UsageError("name at least one log to witness: --log VKEY or --policy FILE")
    logs: dict[str, list[Verifier]] = {}
    for key in keys:
        if key.alg != ALG_ED25519:
            raise UsageError(f"--log {key.name}: not a log key (Ed25519, type 0x01)")
        logs.setdefault(key.name, []).append(key)
    return logs


def _run_serve(args: argparse.Namespace) -> int:
    key = read_signing_key(Path(args.key_file))
    logs = _logs(args)
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"meterlog witness: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    port = sock.getsockname()[1]

    import uvicorn  # noqa: PLC0415 -- the server's dependencies load only to serve

    from verifier.witness import FailureLimit, create_witness_app  # noqa: PLC0415

    if args.failure_burst < 1 or not args.failure_interval > 0 or args.max_refused < 0:
        raise UsageError(
            "--failure-burst and --failure-interval must be positive, --max-refused 0 or more"
        )
    failures = FailureLimit(burst=args.failure_burst, interval_s=args.failure_interval)
    app = create_witness_app(
        key, logs, Path(args.db), lambda: int(time.time()), failures=failures,
        max_refused=args.max_refused,
    )  # fmt: skip
    vkey = format_vkey(Verifier(key.name, ALG_COSIGNATURE_V1, key.public_key))

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(
                    f"meterlog: witness {key.name} serving at http://{args.host}:{port}\n"
                    f"  witness key: {vkey}\n"
                    f"  witnessing:  {', '.join(sorted(logs))}\n"
                    f"  state:       {args.db}",
                    file=sys.stderr,
                    flush=True,
                )

    config = uvicorn.Config(app, host=args.host, port=port, lifespan="on", log_level="warning")
    try:
        asyncio.run(Server(config).serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("meterlog: the witness has stopped", file=sys.stderr)
    return EXIT_OK


def _run_vkey(args: argparse.Namespace) -> int:
    key = read_signing_key(Path(args.key_file))
    print(format_vkey(Verifier(key.name, ALG_COSIGNATURE_V1, key.public_key)))
    return EXIT_OK


def add_witness_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``witness serve`` and ``witness vkey``."""
    witness = subparsers.add_parser(
        "witness", help="run a C2SP tlog-witness that cosigns consistent checkpoints"
    )
    verbs = witness.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = verbs.add_parser(
        "serve",
        help="serve POST /add-checkpoint and GET /<sha256(origin)>/checkpoint",
        description="Cosign each log's checkpoints, with the key in --key-file (made by "
        "meterlog keygen; cosignature/v1, type 0x04), only when each is consistent with the "
        "last one cosigned for its origin. State (the latest cosigned checkpoint per origin, "
        "and refused ones that prove a fork, as fork evidence) is kept in the SQLite file "
        "--db. An address with too many refused requests gets 429. Exit codes: "
        "0 stopped, 2 usage error, 3 cannot listen.",
    )
    serve.add_argument("--key-file", required=True, metavar="FILE", help="the witness's key")
    serve.add_argument(
        "--log", action="append", default=[], metavar="VKEY",
        help="a log to witness: its verifier key (origin = key name), or a file holding it "
        "(repeatable)",
    )  # fmt: skip
    serve.add_argument("--policy", metavar="FILE", help="witness the logs of this policy file")
    serve.add_argument("--db", default="witness.db", metavar="FILE", help="default: witness.db")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument("--port", type=int, default=8081, help="default: 8081 (0: any free port)")
    serve.add_argument(
        "--failure-burst", type=int, default=10, metavar="N",
        help="answers other than 200 one client address may have at once before it gets 429 "
        "(default: 10)",
    )  # fmt: skip
    serve.add_argument(
        "--failure-interval", type=float, default=6.0, metavar="S",
        help="then one more every S seconds (default: 6)",
    )  # fmt: skip
    serve.add_argument(
        "--max-refused", type=int, default=100, metavar="N",
        help="fork evidence kept per origin, at most (default: 100)",
    )  # fmt: skip
    serve.set_defaults(func=_run_serve)
    vkey = verbs.add_parser(
        "vkey", help="print the witness's cosignature/v1 verifier key (for policies and logs)"
    )
    vkey.add_argument("--key-file", required=True, metavar="FILE", help="the witness's key")
    vkey.set_defaults(func=_run_vkey)
