"""The witness and the log server end to end over loopback, with restarts of both.

A real ``meterlog witness serve`` and a real ``meterlog serve`` configured with it (a
``--witness-policy`` with ``quorum``): receipts submitted over HTTP end up in checkpoints the
witness cosigns, GET /checkpoint serves them with the cosignature merged in, and a restart of
the witness, then of the log, loses nothing on either side. Bundles the log handed out then
verify offline in a fresh process that has no network at all.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cli.main import main
from tests.log_server.server_process import METERLOG, Load, register_edge, start_server
from tests.verifier.logs import (
    EDGE_KEY,
    LOG_KEY,
    WITNESS_KEY,
    build_log,
    free_port,
    start_witness,
)
from tlog.checkpoint import SignedCheckpoint
from tlog.note import ALG_COSIGNATURE_V1, format_vkey
from tlog.policy import open_checkpoint_with_policy, parse_policy

POLL_S = 20.0


def _cosigned_at_least(url: str, size: int, policy_text: str) -> SignedCheckpoint:
    """Bounded polling of GET /checkpoint until it is cosigned (quorum) at ``size`` or more."""
    policy = parse_policy(policy_text)
    deadline = time.monotonic() + POLL_S
    while True:
        response = httpx.get(f"{url}/checkpoint", timeout=5)
        if response.status_code == 200:
            signed = open_checkpoint_with_policy(response.content, policy)
            if signed.checkpoint.tree_size >= size:
                return signed
        assert time.monotonic() < deadline, f"not cosigned at {size}: {response.text}"
        time.sleep(0.05)


def _submit(load: Load, url: str, batches: int) -> int:
    load.replay(url, [load.next_batch() for _ in range(batches)])
    assert not load.problems, load.problems
    return max(a.index for a in load.acknowledged) + 1


def _verify_under_the_policy(url: str, tmp_path: Path, old_size: int) -> None:
    """The client commands with the witnessed policy: the latest checkpoint must meet the
    quorum; older ones (and the ones inside submission bundles) are proven consistent with it."""
    policy = str(tmp_path / "verify.policy")
    common = ["--log", url, "--policy", policy, "--no-cache"]
    assert main(["verify", "consistency", *common, str(old_size), "latest"]) == 0
    out = tmp_path / "mine"
    assert main(["receipts", "get", *common, "--consumer", "consumer-0", "--out", str(out)]) == 0
    kept = sorted(out.glob("*.tlog-proof"))
    assert kept
    assert main(["verify", "bundle", "--policy", policy, *map(str, kept)]) == 0


def _can_unshare_network() -> bool:
    """Whether ``unshare -n`` works here (root, or user namespaces); else the fresh process
    still has no server to talk to: both were stopped above."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_witness_and_log_restart_and_keep_cosigning(tmp_path: Path) -> None:
    port = free_port()
    witness_vkey = format_vkey(WITNESS_KEY.verifier(ALG_COSIGNATURE_V1))
    log_vkey = format_vkey(LOG_KEY.verifier())
    witnesses = tmp_path / "witnesses.policy"
    witnesses.write_text(f"witness w1 {witness_vkey} http://127.0.0.1:{port}\nquorum w1\n")
    verifying = f"log {log_vkey}\nwitness w1 {witness_vkey}\nquorum w1\n"
    (tmp_path / "verify.policy").write_text(verifying)
    data_dir = tmp_path / "log"
    build_log(data_dir).close()  # the keys of LOG_KEY and an empty database
    log_args = ["--witness-policy", str(witnesses), "--witness-interval", "0.05"]
    load = Load(EDGE_KEY, "e2e", batch_size=10)

    witness = start_witness(tmp_path / "witness", port)
    log = start_server(data_dir, origin=LOG_KEY.name, extra_args=log_args)
    try:
        register_edge(log, EDGE_KEY)
        size = _submit(load, log.url, 3)
        first = _cosigned_at_least(log.url, size, verifying)

        witness.stop()  # the witness restarts: its state is on disk
        size = _submit(load, log.url, 2)  # the log keeps logging while it is away
        witness = start_witness(tmp_path / "witness", port)
        second = _cosigned_at_least(log.url, size, verifying)
        assert second.checkpoint.tree_size > first.checkpoint.tree_size

        log.stop()  # the log restarts: its cosignatures are in its database
        log = start_server(data_dir, origin=LOG_KEY.name, extra_args=log_args)
        served = _cosigned_at_least(log.url, second.checkpoint.tree_size, verifying)
        assert served.checkpoint.tree_size >= second.checkpoint.tree_size
        size = _submit(load, log.url, 2)
        third = _cosigned_at_least(log.url, size, verifying)
        assert third.checkpoint.tree_size > second.checkpoint.tree_size
        _verify_under_the_policy(log.url, tmp_path, first.checkpoint.tree_size)
    finally:
        log.stop()
        witness.stop()
    assert "a fork" not in log.output()

    # The bundles, checked in a fresh process with no network (a new network namespace).
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for ack in load.acknowledged:
        (bundles / f"{ack.request_id}.tlog-proof").write_text(ack.bundle, encoding="utf-8")
    (tmp_path / "edge.vkey").write_text(format_vkey(EDGE_KEY.verifier()) + "\n")
    argv = [str(METERLOG), "verify", "bundle", "--key", log_vkey, "--edge-key",
            str(tmp_path / "edge.vkey"), *sorted(map(str, bundles.iterdir()))]  # fmt: skip
    if _can_unshare_network():
        argv = ["unshare", "-n", *argv]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("OK ") == len(load.acknowledged) == 70
    assert "receipt signature: signed by edge-1" in done.stderr
