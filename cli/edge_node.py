"""The edge's own commands: ``meterlog edge submit|run|status|requeue|prune|catalog|serve-demo``.

Owns the command line of edge_signer: spooling receipts from a file and draining them into
the log with verified proofs (``submit``), draining continuously (``run``), the spool's
counters (``status``), sending refused receipts again (``requeue``), dropping old verified
rows (``prune``), building a catalog from a directory (``catalog``), and the demo origin
(``serve-demo``, which needs starlette and uvicorn: the ``[edge]`` extra). They sit under
the ``edge`` noun beside the operator's ``register`` and ``revoke`` (cli.edge). Imports
tlog, edge_signer, verifier.cli (exit codes, key loading) and cli.

Exit codes: 0 done (every receipt verified, for ``submit``), 1 a receipt was refused or an
answer of the log failed verification (the submitter stops; nothing unverified is stored),
2 usage error (or another submitter holds the spool), 3 the log is unavailable (the
receipts stay spooled), 10 the log forked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from cli.client import log_url
from cli.log_catalog import CatalogUnavailableError, fetch_catalog
from cli.receipt import read_receipt_lines
from edge_signer.catalog import Catalog, build_catalog, format_catalog, load_catalog
from edge_signer.signer import EdgeKeyError, EdgeSigner, SignedReceipt, load_edge_key
from edge_signer.spool import DB_NAME, DEFAULT_CAPACITY, Spool, SpoolError, SpoolStatus
from edge_signer.submitter import (
    Backoff,
    LogForkError,
    LogMisbehaviourError,
    LogRefusedError,
    LogUnavailableError,
    SpoolBusyError,
    Submitter,
    submitter_lock,
)
from log_server.sockets import listen
from tlog.entry import SCOPES
from tlog.errors import MalformedError, VerificationError
from tlog.note import Verifier
from verifier.cli import (
    EXIT_FAILED,
    EXIT_FORK,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    UsageError,
    load_vkey,
)

__all__ = ["add_edge_node_commands"]

log = logging.getLogger("edge_signer")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _sleep(seconds: float) -> bool:
    """Wait between retries; False: go on (only a signal stops ``submit``)."""
    time.sleep(seconds)
    return False


def _say_logs() -> None:
    """Send edge_signer's log lines to stderr, as the CLI's human output."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("meterlog edge: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _spool_dir(args: argparse.Namespace, *, must_exist: bool) -> Path:
    directory = Path(args.spool)
    if must_exist and not (directory / DB_NAME).is_file():
        raise UsageError(f"--spool {directory}: no spool there ({DB_NAME} is missing)")
    return directory


@contextmanager
def _open_spool(args: argparse.Namespace, *, must_exist: bool) -> Iterator[Spool]:
    try:
        spool = Spool(_spool_dir(args, must_exist=must_exist), capacity=args.capacity)
    except SpoolError as exc:
        raise UsageError(f"--spool {args.spool}: {exc}") from exc
    with spool:
        yield spool


def _log_target(args: argparse.Namespace) -> tuple[str, Verifier]:
    """The --log URL and --log-key, checked before anything is touched."""
    return log_url(args.log), load_vkey(args.log_key, "--log-key")


def _submitter(args: argparse.Namespace, spool: Spool, target: tuple[str, Verifier]) -> Submitter:
    url, log_key = target
    try:
        return Submitter(
            spool,
            url,
            log_key,
            origin=args.origin,
            batch_size=args.batch_size,
            batch_wait_s=args.batch_wait,
            timeout_s=args.timeout,
            backoff=Backoff(maximum_s=args.max_backoff),
        )
    except (MalformedError, VerificationError) as exc:
        raise UsageError(
            f"--log-key: the spool's last verified checkpoint does not open with it: {exc}"
        ) from exc


def _failure_status(exc: Exception, spool_dir: Path) -> int:
    """The exit code for why a submitter stopped, after saying why on stderr (and, for a
    fork, writing its evidence into the spool directory)."""
    if isinstance(exc, LogForkError):
        print(f"meterlog: LOG FORK DETECTED: {exc}", file=sys.stderr)
        path = spool_dir / f"fork-{hashlib.sha256(exc.evidence).hexdigest()[:16]}.evidence"
        try:
            path.write_bytes(exc.evidence)
            print(f"  evidence: {path} (meterlog verify evidence checks it)", file=sys.stderr)
        except OSError as error:
            print(f"  the evidence could not be written to {path}: {error}", file=sys.stderr)
            sys.stderr.buffer.write(exc.evidence)
        return EXIT_FORK
    if isinstance(exc, LogMisbehaviourError):
        print(f"meterlog: STOPPED, nothing of the batch stored: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, LogRefusedError):
        print(f"meterlog: the log refused the batch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, LogUnavailableError):
        print(f"meterlog: the log is unavailable; receipts stay spooled: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    raise exc


# -- submit -----------------------------------------------------------------------------------


def _run_submit(args: argparse.Namespace) -> int:
    _say_logs()
    target = _log_target(args)
    lines, bad = read_receipt_lines(args.file)  # each line exactly as signed, decoded
    receipts = [SignedReceipt(line.receipt, line.data) for line in lines]
    for outcome in bad:
        print(f"  rejected  line {outcome.number}: {outcome.error}", file=sys.stderr)
    status = EXIT_FAILED if bad else EXIT_OK
    directory = _spool_dir(args, must_exist=False)
    try:
        with submitter_lock(directory), _open_spool(args, must_exist=False) as spool:
            try:
                stored = spool.append(receipts, _now_ms())
            except SpoolError as exc:
                print(f"meterlog: nothing spooled: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            print(
                f"{args.file}: spooled {sum(stored)} receipt(s) "
                f"({len(stored) - sum(stored)} were spooled before) in {directory}",
                file=sys.stderr,
            )
            with _submitter(args, spool, target) as submitter:
                try:
                    submitter.drain(_sleep, give_up_after=args.retries)
                except (LogMisbehaviourError, LogRefusedError, LogUnavailableError) as exc:
                    status = _failure_status(exc, Path(args.spool))
            rows = [spool.receipt(r.edge, r.request_id) for r in receipts]
    except SpoolBusyError as exc:
        raise UsageError(str(exc)) from exc
    counts: dict[str, int] = {}
    for row in rows:
        if row is None:  # pragma: no cover - appended above, and only prune deletes rows
            continue
        counts[row.state] = counts.get(row.state, 0) + 1
        if args.json:
            print(
                json.dumps(
                    {
                        "request_id": row.request_id,
                        "state": row.state,
                        "index": row.log_index,
                        "error": row.error,
                    },
                    sort_keys=True,
                )
            )
        if row.state in ("rejected", "conflict"):
            print(f"  {row.state:<9} {row.request_id}: {row.error}", file=sys.stderr)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
    print(f"{args.file}: {len(rows)} receipt(s): {summary}", file=sys.stderr)
    if status == EXIT_OK and counts.get("verified", 0) != len(rows):
        status = EXIT_FAILED if not counts.get("pending") else EXIT_UNAVAILABLE
    return status


# -- run --------------------------------------------------------------------------------------


def _run_run(args: argparse.Namespace) -> int:
    _say_logs()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    target = _log_target(args)
    directory = _spool_dir(args, must_exist=True)
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with submitter_lock(directory), _open_spool(args, must_exist=True) as spool:
            with _submitter(args, spool, target) as submitter:
                print(
                    f"meterlog: draining {directory} into {submitter.log_url} "
                    f"({spool.status().pending} pending); stop with Ctrl-C",
                    file=sys.stderr,
                )
                try:
                    if args.exit_when_drained:
                        submitter.drain(stop.wait)
                    else:
                        submitter.run(stop)
                except (LogMisbehaviourError, LogRefusedError, LogUnavailableError) as exc:
                    return _failure_status(exc, Path(args.spool))
                except KeyboardInterrupt:
                    pass
            left = spool.status().pending
    except SpoolBusyError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    stats = submitter.stats
    print(
        f"meterlog: stopped: {stats.batches} batch(es), {stats.logged} logged, "
        f"{stats.duplicate} duplicate, {stats.rejected} rejected, {stats.conflict} conflict; "
        f"{left} pending",
        file=sys.stderr,
    )
    return EXIT_OK


# -- status, requeue, prune -------------------------------------------------------------------


def _age(ms: int | None) -> str:
    return "none pending" if ms is None else f"{ms / 1000:.1f} s"


def _print_status(status: SpoolStatus, directory: Path, now_ms: int) -> None:
    lines = [
        f"spool {directory}",
        f"  spooled:    {status.spooled}",
        f"  submitted:  {status.submitted}",
        f"  verified:   {status.verified}",
        f"  pending:    {status.pending} (capacity {status.capacity})",
        f"  rejected:   {status.rejected}",
        f"  conflict:   {status.conflict}",
        f"  pruned:     {status.pruned}",
        f"  oldest pending: {_age(status.oldest_pending_age_ms(now_ms))}",
    ]
    print("\n".join(lines), file=sys.stderr)


def _run_status(args: argparse.Namespace) -> int:
    with _open_spool(args, must_exist=True) as spool:
        status = spool.status()
    now_ms = _now_ms()
    if args.json:
        print(json.dumps(status.to_json(now_ms), sort_keys=True))
    _print_status(status, Path(args.spool), now_ms)
    return EXIT_OK


def _run_requeue(args: argparse.Namespace) -> int:
    with _open_spool(args, must_exist=True) as spool:
        count = spool.requeue(args.state)
    print(f"requeued {count} {args.state} receipt(s) as pending", file=sys.stderr)
    return EXIT_OK


def _run_prune(args: argparse.Namespace) -> int:
    with _open_spool(args, must_exist=True) as spool:
        count = spool.prune(_now_ms() - args.older_than_days * 86_400_000)
    print(
        f"pruned {count} verified receipt(s) answered over {args.older_than_days} day(s) ago",
        file=sys.stderr,
    )
    return EXIT_OK


# -- catalog ----------------------------------------------------------------------------------


def _catalog(args: argparse.Namespace, directory: Path) -> Catalog:
    if getattr(args, "from_log", False):
        return _catalog_from_log(args, directory)
    if args.catalog is not None:
        try:
            return load_catalog(Path(args.catalog))
        except OSError as exc:
            raise UsageError(f"--catalog {args.catalog}: {exc.strerror or exc}") from exc
        except MalformedError as exc:
            raise UsageError(f"--catalog {args.catalog}: {exc}") from exc
    if args.creator is None or args.license is None:
        raise UsageError("give --catalog FILE, or --creator and --license to build one")
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    scopes = tuple(dict.fromkeys(args.scope or SCOPES))
    try:
        return build_catalog(
            directory,
            creator_id=args.creator,
            license=args.license,
            scopes=scopes,
            prefix=args.prefix,
        )
    except MalformedError as exc:
        flag = {"creator_id": "--creator", "license": "--license", "scopes": "--scope"}
        name = exc.field.rpartition(".")[2]
        raise UsageError(f"{flag.get(name, '--' + name)}: {exc.reason}") from exc


def _catalog_from_log(args: argparse.Namespace, directory: Path) -> Catalog:
    """The catalog built from the log's manifest entries (cli.log_catalog)."""
    if args.log is None or args.log_key is None:
        raise UsageError("--from-log needs --log and --log-key")
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    try:
        catalog, uncovered = fetch_catalog(
            log_url(args.log), load_vkey(args.log_key, "--log-key"), directory,
            prefix=args.prefix, origin=args.origin, timeout_s=args.timeout,
        )  # fmt: skip
    except CatalogUnavailableError as exc:
        print(f"meterlog: the log is unavailable: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNAVAILABLE) from exc
    except VerificationError as exc:
        print(f"FAILED  the log's catalog does not verify: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from exc
    except MalformedError as exc:
        raise UsageError(f"{exc.field}: {exc.reason}") from exc
    for path in uncovered:
        print(f"  {path}: no live manifest version in the log; not served", file=sys.stderr)
    return catalog


def _run_catalog(args: argparse.Namespace) -> int:
    args.catalog = None
    catalog = _catalog(args, Path(args.directory))
    data = format_catalog(catalog)
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    where = args.out or "stdout"
    print(f"catalogued {len(catalog)} file(s) of {args.directory} to {where}", file=sys.stderr)
    return EXIT_OK


# -- serve-demo -------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    try:
        return listen(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _run_serve_demo(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: PLC0415 -- the demo's web stack loads only to serve

        from edge_signer.demo import DemoSettings, demo_app  # noqa: PLC0415
    except ImportError as exc:
        raise UsageError(
            f"serve-demo needs starlette and uvicorn ({exc.name} is missing): "
            "pip install 'meterlog[edge]'"
        ) from exc
    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    try:
        key = load_edge_key(Path(args.key_file), args.edge)
    except EdgeKeyError as exc:
        raise UsageError(f"--key-file {exc}") from exc
    settings = DemoSettings(
        directory=directory,
        signer=EdgeSigner(key),
        catalog=_catalog(args, directory),
        marketplace_keys=tuple(load_vkey(k, "--marketplace-key") for k in args.marketplace_key),
        spool_dir=Path(args.spool),
        log_url=log_url(args.log),
        log_key=load_vkey(args.log_key, "--log-key"),
        origin=args.origin,
        capacity=args.capacity,
        trusted_upstreams=tuple(args.trust_upstream or ()),
        batch_size=args.batch_size,
        batch_wait_s=args.batch_wait,
        timeout_s=args.timeout,
    )
    _say_logs()
    sock = _listen(args.host, args.port)
    port: int = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(
                    f"meterlog: edge {key.name} serving {directory} at http://{host}:{port} "
                    f"({len(settings.catalog)} catalogued files)\n"
                    f"  spool:  {settings.spool_dir} (drained into {settings.log_url})\n"
                    "  stop with Ctrl-C",
                    file=sys.stderr,
                    flush=True,
                )

    server = Server(uvicorn.Config(app=demo_app(settings), lifespan="on", log_level="warning"))
    try:
        server.run(sockets=[sock])
    except SystemExit:
        print("meterlog: the demo origin failed to start (said why, above)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("meterlog: the demo origin has stopped", file=sys.stderr)
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------------


def _count(text: str) -> int:
    if not text.isdigit() or str(int(text)) != text or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive decimal integer")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 86400 seconds")
    return value


def _add_spool(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spool", default="edge-spool", metavar="DIR", help="the spool (default: edge-spool)"
    )
    parser.add_argument(
        "--capacity",
        type=_count,
        default=DEFAULT_CAPACITY,
        metavar="N",
        help=f"most pending receipts the spool holds (default: {DEFAULT_CAPACITY})",
    )


def _add_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    parser.add_argument(
        "--log-key",
        required=True,
        metavar="VKEY",
        help="the log's verifier key, or a file holding it (the server's DATA_DIR/log.vkey)",
    )
    parser.add_argument("--origin", help="also require this checkpoint origin")
    parser.add_argument(
        "--batch-size", type=_count, default=256, metavar="N", help="receipts a batch (256)"
    )
    parser.add_argument(
        "--batch-wait",
        type=_seconds,
        default=0.5,
        metavar="S",
        help="send a smaller batch once its oldest receipt waited this long (0.5)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="S", help="HTTP timeout (30)"
    )
    parser.add_argument(
        "--max-backoff",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="longest wait between retries while the log is unavailable (30)",
    )


def _add_catalog_terms(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--creator", metavar="ID", help="the creator of every file")
    parser.add_argument("--license", metavar="URI", help="the license URI (Link header)")
    parser.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="a scope the license allows (repeat; default: all three). "
        "Only 'training' makes the files a dataset that inference tokens cannot fetch",
    )
    parser.add_argument(
        "--prefix", default="/", metavar="PATH", help="the URL path the directory is served at"
    )
    parser.add_argument(
        "--from-log",
        action="store_true",
        help="build the catalog from the log's creator and manifest entries (verified with "
        "--log-key): each file under the newest version of its content_id not withdrawn",
    )


def add_edge_node_commands(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the edge's verbs under the ``edge`` noun (cli.edge calls this)."""
    submit = verbs.add_parser(
        "submit",
        help="spool the receipts of a JSON Lines file, then drain the spool into the log",
        description="Append the signed receipts in FILE (one canonical JSON receipt a line, "
        "as meterlog receipt make prints them) to the spool, durably, then submit every "
        "pending receipt in batches, verify each returned proof bundle against --log-key "
        "(and that the logged entry is exactly the receipt sent) and store it in the spool. "
        + _EXIT_HELP,
    )
    submit.add_argument("file", metavar="FILE.jsonl")
    _add_spool(submit)
    _add_log(submit)
    submit.add_argument(
        "--retries",
        type=_count,
        default=5,
        metavar="N",
        help="give up (exit 3, receipts stay spooled) after N failed attempts in a row (5)",
    )
    submit.add_argument(
        "--json", action="store_true", help="print one JSON object per receipt of FILE"
    )
    submit.set_defaults(func=_run_submit)

    run = verbs.add_parser(
        "run",
        help="drain the spool into the log continuously (or once, --exit-when-drained)",
        description="Submit pending receipts in batches (--batch-size, or whatever waited "
        "--batch-wait), retrying with backoff while the log is unavailable, until stopped "
        "(Ctrl-C, SIGTERM). Every answer is verified before it is stored; one that fails "
        "stops the command. " + _EXIT_HELP,
    )
    _add_spool(run)
    _add_log(run)
    run.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="stop once nothing is pending (replay a spool after an outage)",
    )
    run.set_defaults(func=_run_run)

    status = verbs.add_parser(
        "status",
        help="the spool's counters: spooled, submitted, verified, pending, oldest pending",
        description="Print the spool's counters (on stderr; --json: one object on stdout).",
    )
    _add_spool(status)
    status.add_argument("--json", action="store_true", help="print the counters as JSON")
    status.set_defaults(func=_run_status)

    requeue = verbs.add_parser(
        "requeue",
        help="make refused receipts pending again (e.g. once the edge key is registered)",
        description="Put every receipt the log rejected (or, with --state conflict, found "
        "in conflict) back to pending, so the next submit or run sends it again.",
    )
    _add_spool(requeue)
    requeue.add_argument("--state", choices=("rejected", "conflict"), default="rejected")
    requeue.set_defaults(func=_run_requeue)

    prune = verbs.add_parser(
        "prune",
        help="delete verified receipts answered long ago (their proofs stay in the log)",
        description="Delete the spool's verified receipts (and their bundles) answered more "
        "than --older-than-days ago. Pending and refused receipts are never pruned.",
    )
    _add_spool(prune)
    prune.add_argument("--older-than-days", type=_count, required=True, metavar="D")
    prune.set_defaults(func=_run_prune)

    catalog = verbs.add_parser(
        "catalog",
        help="build a catalog (content ids, creator, license, scopes) of a directory",
        description="Hash every file under DIRECTORY and print a catalog (JSON) that maps "
        "its URL path to its content id, the creator, the license and the scopes.",
    )
    catalog.add_argument("directory", metavar="DIRECTORY")
    _add_catalog_terms(catalog)
    catalog.add_argument("--log", metavar="URL", help="with --from-log: the log's base URL")
    catalog.add_argument("--log-key", metavar="VKEY", help="with --from-log: the log's key")
    catalog.add_argument("--origin", help="with --from-log: require this checkpoint origin")
    catalog.add_argument("--timeout", type=_seconds, default=30.0, metavar="S")
    catalog.add_argument("--out", metavar="FILE", help="write it here (default: stdout)")
    catalog.set_defaults(func=_run_catalog)

    demo = verbs.add_parser(
        "serve-demo",
        help="serve a directory through the receipt middleware, with a submitter",
        description="Serve DIRECTORY over HTTP through ReceiptMiddleware: every GET needs a "
        "marketplace token (Authorization: Bearer), gets X-Provenance, Link and X-Receipt "
        "headers, and its signed receipt is spooled before the response completes; a "
        "submitter thread drains the spool into the log. Needs starlette and uvicorn "
        "(pip install 'meterlog[edge]').",
    )
    demo.add_argument("directory", metavar="DIRECTORY")
    demo.add_argument("--key-file", required=True, metavar="FILE", help="the edge's signing key")
    demo.add_argument("--edge", metavar="ID", help="check that the key is this edge's")
    demo.add_argument(
        "--marketplace-key",
        required=True,
        action="append",
        metavar="VKEY",
        help="a marketplace verifier key tokens may be signed by, or a file (repeat)",
    )
    demo.add_argument("--catalog", metavar="FILE", help="the catalog (default: built from DIR)")
    _add_catalog_terms(demo)
    _add_spool(demo)
    _add_log(demo)
    demo.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    demo.add_argument(
        "--port", type=int, default=8081, metavar="PORT", help="default: 8081 (0: any free port)"
    )
    demo.add_argument(
        "--trust-upstream",
        action="append",
        metavar="ADDR",
        help="a client address whose X-Request-Id is an upstream tier's: its requests are "
        "metered there, not here (repeat)",
    )
    demo.set_defaults(func=_run_serve_demo)


_EXIT_HELP = (
    "Exit codes: 0 done, 1 a receipt refused or the log's answer failed verification, "
    "2 usage error, 3 log unavailable (receipts stay spooled), 10 log fork detected."
)
