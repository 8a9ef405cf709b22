"""Benchmark: what an anchor costs in gas, and how long it takes to become final, on anvil.

A script, not a test: it prints figures and asserts none. It starts anvil (as ``make test``
installed it in ``node_modules/``) on a free loopback port, mining a block every
``--block-time`` seconds (interval mining, as a real chain does), deploys the committed
anchor contract, and then:

1. gas: sends ``--anchors`` anchors of checkpoints of growing size through
   :func:`anchor.chain.anchor_checkpoint` and reads each receipt's ``gasUsed``. The floor is
   measured in the same run: the same 100 bytes of call data sent to an address with no
   code, which costs the transaction's 21,000 base plus the call data and nothing else — what
   any transaction carrying an anchor must pay. ``ratio`` = anchor gas / floor gas; the
   issue's target is at most 30,000 gas per anchor, the 21,000 included.
2. latency: runs the log server's own job (:class:`log_server.anchoring.Anchoring`, on a
   SQLite database in a temporary directory, growing the tree by one entry before each
   anchor) and measures, for each of ``--anchors`` anchors, the wall time from the start of
   ``anchor_due`` (sign, store, send) to the first ``follow`` (polled every ``--poll`` s) that
   finds it under ``--confirmations`` blocks. The floor is ``confirmations x block time``: the
   time the chain itself takes to put that many blocks on top of an anchor sent just before
   a block; ``ratio`` = median latency / floor.

With ``--json``, one JSON object per line on stdout, each exactly ``{"metric", "value",
"unit", "floor", "ratio"}``; notes (anvil's version, the load average) go to stderr.

Run: ``.venv/bin/python bench/anchor.py [--anchors N] [--block-time S] [--confirmations N]
[--json]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

# This script is named like the anchor package it measures: take its folder off the path
# while the packages load, so that `import anchor` finds the package and not this file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from anchor.chain import Chain, address_of, anchor_checkpoint  # noqa: E402
from anchor.record import encode_anchor_call, origin_hash  # noqa: E402
from anchor.secret import AnchorKey  # noqa: E402
from log_server.anchoring import Anchoring  # noqa: E402
from log_server.config import Config  # noqa: E402
from log_server.sequencer import LogIdentity, sequence  # noqa: E402
from log_server.storage import Storage  # noqa: E402
from tlog.checkpoint import Checkpoint  # noqa: E402
from tlog.entry import EdgeKey, sign_edge_key  # noqa: E402
from tlog.note import SigningKey, format_vkey  # noqa: E402

sys.path.append(str(_HERE))
from report import Report  # noqa: E402 -- bench/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "bench.example/anchor"
ANVIL_KEY = AnchorKey.parse(
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80", "anvil account 0"
)
TARGET_GAS = 30_000


class BenchError(Exception):
    """The benchmark could not run (anvil missing, an anchor never final)."""


@contextmanager
def anvil(block_time_s: float) -> Iterator[tuple[str, str]]:
    """anvil on 127.0.0.1 (a free port), interval mining; (RPC URL, version line)."""
    found = sorted((ROOT / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    if not found:
        raise BenchError("anvil is not in node_modules/: run `make test` (or npm ci) first")
    version = subprocess.run(
        [str(found[0]), "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    process = subprocess.Popen(
        [str(found[0]), "--host", "127.0.0.1", "--port", "0", "--block-time", str(block_time_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.search(rb"Listening on (\S+)", line)
            if match:
                yield "http://" + match.group(1).decode(), version
                return
        raise BenchError("anvil exited before listening")
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def root_of(n: int) -> bytes:
    return hashlib.sha256(b"bench root %d" % n).digest()


def measure_gas(chain: Chain, contract: str, anchors: int) -> tuple[list[int], int]:
    """Gas used by ``anchors`` anchors, and the floor: the same call data sent to no code."""
    used = []
    for n in range(1, anchors + 1):
        record = anchor_checkpoint(
            chain, ANVIL_KEY, contract, Checkpoint(ORIGIN, 1000 * n, root_of(n))
        )
        mined = chain.receipt(record.tx_hash, contract)
        assert mined is not None
        used.append(mined.gas_used)
    data = encode_anchor_call(origin_hash(ORIGIN), 1000, root_of(1))
    sender = chain.w3.to_checksum_address(address_of(ANVIL_KEY))
    nobody = chain.w3.to_checksum_address("0x" + "11" * 20)
    tx_hash = chain.w3.eth.send_transaction({"from": sender, "to": nobody, "data": data})
    floor = int(chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)["gasUsed"])
    return used, floor


def measure_latency(
    url: str, contract: str, anchors: int, confirmations: int, poll_s: float
) -> list[float]:
    """Seconds from ``anchor_due`` to final, for each anchor the log server's job sends."""
    log = LogIdentity(ORIGIN, SigningKey(ORIGIN, bytes(range(32))))
    operator = SigningKey(f"{ORIGIN}/operator", bytes(range(32, 64)))
    latencies = []
    with tempfile.TemporaryDirectory(prefix="meterlog-bench-anchor-") as tmp:
        storage = Storage.open(f"sqlite:///{tmp}/log.db")
        config = Config(
            data_dir=Path(tmp),
            origin=ORIGIN,
            anchor_rpc=url,
            anchor_contract=contract,
            anchor_key=ANVIL_KEY,
            anchor_confirmations=confirmations,
            anchor_interval_s=3600,
            anchor_poll_interval_s=poll_s,
        )
        job = Anchoring(config, storage, ORIGIN)
        job.start()
        try:
            for n in range(anchors):
                edge = SigningKey(f"bench-edge-{n}", hashlib.sha256(b"%d" % n).digest())
                entry = EdgeKey("register", edge.name, format_vkey(edge.verifier()), 0)
                sequence(storage, log, [sign_edge_key(entry, operator)], time.time_ns() // 10**6)
                started = time.perf_counter()
                job.anchor_due(time.time_ns() // 10**6)
                deadline = started + 60 + 10 * confirmations
                while True:
                    latest = storage.anchors.latest()
                    if latest is not None and latest.status == "final":
                        break
                    if time.perf_counter() > deadline or job.error is not None:
                        raise BenchError(f"anchor {n} not final: {job.error or latest}")
                    time.sleep(poll_s)
                    job.follow(time.time_ns() // 10**6)
                latencies.append(time.perf_counter() - started)
        finally:
            job.close()
            storage.close()
    return latencies


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", type=int, default=10, help="anchors per phase (10)")
    parser.add_argument("--block-time", type=float, default=1.0, help="anvil's seconds per block")
    parser.add_argument("--confirmations", type=int, default=3, help="blocks before final (3)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between follows")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Report(args.json)
    out.note(f"load average at the start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    with anvil(args.block_time) as (url, version):
        out.note(f"{version}; a block every {args.block_time:g} s")
        chain = Chain.connect(url)
        contract = chain.deploy(ANVIL_KEY)
        used, floor = measure_gas(chain, contract, args.anchors)
        gas = max(used)
        out.note(f"gas per anchor over {len(used)} anchors: {sorted(set(used))}")
        out.metric(
            "gas_per_anchor",
            gas,
            "gas",
            floor=floor,
            ratio=round(gas / floor, 3),
            line=f"gas per anchor: {gas} (floor: {floor} for the same call data to no code; "
            f"ratio {gas / floor:.3f}; target <= {TARGET_GAS})",
        )
        out.metric(
            "gas_per_anchor_vs_target",
            gas,
            "gas",
            floor=TARGET_GAS,
            ratio=round(gas / TARGET_GAS, 3),
            line=f"gas per anchor / target: {gas / TARGET_GAS:.3f}",
        )
        latencies = measure_latency(url, contract, args.anchors, args.confirmations, args.poll)
        floor_s = args.confirmations * args.block_time
        median = statistics.median(latencies)
        out.note("anchor-to-final latencies, s: " + ", ".join(f"{x:.2f}" for x in latencies))
        for name, value in (("p50", median), ("max", max(latencies))):
            out.metric(
                f"anchor_to_final_s_{name}",
                round(value, 3),
                "s",
                floor=floor_s,
                ratio=round(value / floor_s, 3),
                line=f"anchor to final ({args.confirmations} confirmations, {name}): "
                f"{value:.2f} s (floor {floor_s:g} s = confirmations x block time; "
                f"ratio {value / floor_s:.2f})",
            )
    out.note(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/anchor.py: {exc}", file=sys.stderr)
        sys.exit(1)
