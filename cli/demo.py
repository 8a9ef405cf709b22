"""``meterlog demo``: the tlog core end to end, as files you can inspect and verify.

Owns the demo that ``make run`` starts until the log server exists. It creates a log key,
an operator key and an edge key; logs an ``edge_key`` entry and a batch of signed receipts in
an in-memory hash store; signs a checkpoint; publishes the log as static C2SP tiles and entry
bundles (the layout any web server or CDN can serve); writes one ``.tlog-proof`` bundle per
receipt; and then checks all of it the way an outsider would: every bundle offline, and one
inclusion proof recomputed from the published tiles alone.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cli.keys import generate_key, write_signing_key
from tlog.bundle import ProofBundle, format_bundle
from tlog.checkpoint import Checkpoint, format_checkpoint, sign_checkpoint
from tlog.entry import EdgeKey, Entry, Receipt, encode_entry, sign_edge_key, sign_receipt
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, format_vkey
from tlog.proofs import inclusion_proof
from tlog.tiles import (
    ENTRIES,
    TILE_WIDTH,
    Tile,
    TileHashReader,
    encode_entry_bundle,
    tile_hash_indexes,
    tiles_for_size,
)
from verifier.cli import EXIT_FAILED, EXIT_OK, UsageError
from verifier.offline import TrustPolicy, check_bundle

__all__ = ["add_demo_command", "run_demo"]

ORIGIN = "demo.meterlog.example/log"
EDGE = "edge-demo-fra1"
_MARKER = ".meterlog-demo"
_CREATORS = ("acct:alice@example.com", "acct:bob@example.com", "acct:carol@example.com")
_CONSUMERS = (("acme-ai", "training", "job-2026-11-a"), ("bolt-labs", "inference", None))


def _say(line: str = "") -> None:
    print(line, file=sys.stderr)


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise UsageError(f"{out} is not empty and holds no earlier demo; pick another --out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).write_text("written by meterlog demo; the whole folder is replaced\n")


def _new_key(out: Path, role: str, name: str) -> SigningKey:
    key = generate_key(name)
    write_signing_key(key, out / f"{role}.key")
    (out / f"{role}.vkey").write_text(format_vkey(key.verifier()) + "\n", encoding="utf-8")
    return key


def _receipts(edge: SigningKey, count: int, now_ms: int) -> list[Receipt]:
    receipts = []
    for i in range(count):
        consumer, scope, job = _CONSUMERS[i % len(_CONSUMERS)]
        content = hashlib.sha256(f"demo content {i % 7}".encode()).hexdigest()
        manifest = hashlib.sha256(f"demo manifest {i % 7} v1".encode()).hexdigest()
        receipt = Receipt(
            request_id=f"req-demo-{i:04d}",
            edge=EDGE,
            consumer_id=consumer,
            token_id=f"tok-{consumer}",
            job_id=job,
            scope=scope,
            content_id=f"sha256:{content}",
            creator_id=_CREATORS[i % len(_CREATORS)],
            manifest=f"sha256:{manifest}",
            bytes_sent=10_000 + 37 * i,
            cache="hit" if i % 3 else "miss",
            served_at_ms=now_ms - (count - i) * 1_000,
        )
        receipts.append(sign_receipt(receipt, edge))
    return receipts


def _publish_tiles(log_dir: Path, store: MemoryHashStore, entries: list[bytes]) -> int:
    """Write the tree as C2SP tiles and entry bundles under log_dir; return the file count."""
    written = 0
    tiles = tiles_for_size(store.tree_size)
    for tile in tiles:
        data = b"".join(store.read_hashes(tile_hash_indexes(tile)))
        _write(log_dir / tile.path(), data)
        written += 1
        if tile.level == 0:
            start = tile.n * TILE_WIDTH
            bundle = Tile(ENTRIES, tile.n, tile.width)
            _write(
                log_dir / bundle.path(), encode_entry_bundle(entries[start : start + tile.width])
            )
            written += 1
    return written


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class _DirectoryTileReader:
    """Reads published tiles back from disk, as a client would over HTTP."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]:
        return [(self.log_dir / tile.path()).read_bytes() for tile in tiles]


def run_demo(out: Path, count: int, now_ms: int) -> int:
    _prepare(out)
    log_key = _new_key(out, "log", ORIGIN)
    operator = _new_key(out, "operator", "demo.meterlog.example/operator")
    edge = _new_key(out, "edge", EDGE)
    _say(f"keys        log {format_vkey(log_key.verifier())}")
    _say(f"            edge {format_vkey(edge.verifier())}")
    _say(f"            operator {format_vkey(operator.verifier())}")

    registration = EdgeKey(
        action="register",
        edge=EDGE,
        key=format_vkey(edge.verifier()),
        valid_from_ms=now_ms - 3_600_000,
    )
    receipts = _receipts(edge, count, now_ms)
    logged: list[Entry] = [sign_edge_key(registration, operator), *receipts]
    entries = [encode_entry(replace(e, logged_at_ms=now_ms)) for e in logged]
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in entries])
    checkpoint = Checkpoint(ORIGIN, store.tree_size, root_hash(store.tree_size, store))
    signed = sign_checkpoint(checkpoint, [log_key.signer()])
    (out / "checkpoint").write_bytes(signed)
    log_dir = out / "log"
    _write(log_dir / "checkpoint", signed)
    files = _publish_tiles(log_dir, store, entries)
    _say(f"log         {store.tree_size} entries: 1 edge_key, {count} receipts")
    _say(f"checkpoint  {out / 'checkpoint'}")
    for line in format_checkpoint(checkpoint).splitlines():
        _say(f"              {line}")
    _say(f"tiles       {files} files under {log_dir}/tile (C2SP tlog-tiles)")

    bundle_dir = out / "bundles"
    bundle_dir.mkdir()
    policy = TrustPolicy((log_key.verifier(),), origin=ORIGIN)
    failures = 0
    for index, receipt in enumerate(receipts, start=1):  # entry 0 is the edge_key entry
        proof = inclusion_proof(index, store.tree_size, store)
        data = format_bundle(ProofBundle(index, tuple(proof), signed, extra=entries[index]))
        path = bundle_dir / f"{receipt.request_id}.tlog-proof"
        path.write_bytes(data)
        report = check_bundle(data, policy, [edge.verifier()], subject=str(path))
        failures += not report.ok
    _say(f"bundles     {count} receipts, one .tlog-proof each, in {bundle_dir}")
    _say(f"verified    {count - failures} of {count} bundles offline (signature, inclusion, edge)")

    # An outsider with only the checkpoint and the published tiles recomputes a proof.
    index = store.tree_size - 1
    from_tiles = TileHashReader(
        checkpoint.tree_size, checkpoint.root_hash, _DirectoryTileReader(log_dir)
    )
    same = inclusion_proof(index, store.tree_size, from_tiles) == inclusion_proof(
        index, store.tree_size, store
    )
    _say(
        f"tiles       proof for leaf {index} recomputed from authenticated tiles: "
        f"{'matches' if same else 'DIFFERS'}"
    )
    _say()
    _say("Try it yourself:")
    _say(f"  meterlog verify checkpoint --key {out}/log.vkey {out}/checkpoint")
    _say(
        f"  meterlog verify bundle --key {out}/log.vkey --edge-key {out}/edge.vkey "
        f"{bundle_dir}/req-demo-0000.tlog-proof"
    )
    return EXIT_OK if failures == 0 and same else EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if not 1 <= args.receipts <= 100_000:
        raise UsageError("--receipts must be between 1 and 100000")
    return run_demo(Path(args.out), args.receipts, time.time_ns() // 1_000_000)


def add_demo_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the tlog core end to end and leave a verifiable log in a folder",
        description="Create keys, log signed receipts, sign a checkpoint, publish C2SP tiles "
        "and .tlog-proof bundles under --out, and verify them as an outsider would. "
        "The folder is replaced on every run.",
    )
    parser.add_argument("--out", default="demo", help="folder to (re)create (default: demo)")
    parser.add_argument("--receipts", type=int, default=20, help="how many receipts to log")
    parser.set_defaults(func=_run)
