"""Anchoring end to end: a log server's job anchors its checkpoints on a chain, and
``meterlog verify anchor`` checks them from outside.

Against anvil, the real ``meterlog serve`` runs as a subprocess on loopback with its job at
sub-second intervals (anvil mines a block every 0.2 s, so confirmations accrue), and the
verifier runs as a command (``cli.main.main``, in process): anchors that verify, one sent by
somebody else (ignored), one of a forked root sent with the log's own key (exit 10 and an
evidence file that the test re-checks with tlog alone and with ``meterlog verify evidence``,
offline and against the chain), the node going down
and coming back while receipts keep being logged, and a wrong chain ID refused at start —
with the anchoring key, given in the environment, in none of the server's output. Against
eth-tester, the app runs in process under uvicorn in a thread, with the same job, and
:func:`cli.anchor.verify_anchors` checks it over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from anchor.chain import address_of, anchor_checkpoint, find_anchors
from anchor.record import AnchorRecord
from cli.anchor import verify_anchors
from cli.main import main
from log_server.app import create_app
from log_server.config import Config
from tests.anchor.node import DeployedChain, deployed_chain, flaky_proxy, poll
from tests.log_server.conftest import EDGE_KEY
from tests.log_server.server_process import (
    METERLOG,
    ServerProcess,
    receipt,
    register_edge,
    start_server,
    submit,
)
from tlog.checkpoint import Checkpoint
from tlog.errors import ProofError
from tlog.evidence import parse_fork_evidence, verify_fork_evidence
from tlog.note import format_vkey, parse_vkey
from tlog.proofs import verify_consistency

pytestmark = pytest.mark.slow

TIMEOUT_S = 60.0
CONFIRMATIONS = 2


@pytest.fixture
def anvil() -> Iterator[DeployedChain]:
    with deployed_chain("anvil", "--block-time", "0.2") as chain:
        yield chain


def anchoring_flags(c: DeployedChain, rpc: str | None = None) -> list[str]:
    return [
        "--anchor-rpc",
        rpc or c.endpoint,
        "--anchor-chain-id",
        str(c.chain_id),
        "--anchor-contract",
        c.contract,
        "--anchor-interval",
        "0.3",
        "--anchor-poll-interval",
        "0.1",
        "--anchor-confirmations",
        str(CONFIRMATIONS),
    ]


def key_env(c: DeployedChain) -> dict[str, str]:
    return {"METERLOG_ANCHOR_KEY": c.key.hex()}


def get(url: str) -> Any:
    response = httpx.get(url, timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()


def final_anchor_at(url: str, tree_size: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def anchored() -> bool:
        anchors = get(f"{url}/v1/anchors?status=final")["anchors"]
        found[:] = [a for a in anchors if a["tree_size"] == tree_size]
        return bool(found)

    poll(anchored, TIMEOUT_S, f"a final anchor of tree size {tree_size}")
    return found[0]


def grow(server: ServerProcess, start: int, count: int) -> int:
    with httpx.Client(timeout=10.0) as client:
        response = submit(
            client, server.url, [receipt(f"r-{start + i}", EDGE_KEY) for i in range(count)]
        )
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"logged"}
    size: int = get(f"{server.url}/healthz")["tree_size"]
    return size


def verify(
    capsys: pytest.CaptureFixture[str], server: ServerProcess, c: DeployedChain, *extra: str
) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()
    status = main(
        [
            "verify",
            "anchor",
            "--log",
            server.url,
            "--rpc",
            c.endpoint,
            "--contract",
            c.contract,
            "--key",
            str(server.data_dir / "log.vkey"),
            "--json",
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    return status, json.loads(out) if out.strip() else {}, err


def test_a_served_log_is_anchored_and_its_anchors_verify_and_a_fork_is_caught(
    anvil: DeployedChain,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = anvil
    server = start_server(tmp_path / "data", extra_args=anchoring_flags(c), extra_env=key_env(c))
    try:
        register_edge(server, EDGE_KEY)
        first_size = grow(server, 0, 3)
        first = final_anchor_at(server.url, first_size)
        assert first["sender"] == address_of(c.key) and first["gas_used"] <= 30_000
        on_chain = find_anchors(c.chain, c.contract, "test.example/meterlog-process")
        assert first["tx_hash"] in ["0x" + r.tx_hash.hex() for r in on_chain]
        health = get(f"{server.url}/healthz")["anchor"]
        assert health["anchored_tree_size"] == first_size and health["error"] is None

        second_size = grow(server, 3, 2)
        assert get(f"{server.url}/healthz")["anchor"]["lag_entries"] > 0  # not anchored yet
        final_anchor_at(server.url, second_size)
        size = grow(server, 5, 2)  # past both anchors: each needs a consistency proof

        status, report, err = verify(capsys, server, c)
        assert status == 0, err
        verdicts = {(a["tree_size"], a["verdict"]) for a in report["anchors"]}
        assert {(first_size, "consistent"), (second_size, "consistent")} <= verdicts
        assert report["tree_size"] >= size
        assert "consistent with the checkpoint" in err

        # Somebody else anchors a wrong root for this log: not the log's, so ignored.
        origin = report["origin"]
        bogus = Checkpoint(origin, 2, hashlib.sha256(b"not the log").digest())
        anchor_checkpoint(c.chain, c.other_key, c.contract, bogus)
        status, report, err = verify(capsys, server, c)
        assert status == 0, err
        assert any(a["verdict"] == "not the log's" for a in report["anchors"])

        # The log's own key anchors a root its log cannot prove: a fork.
        forked = anchor_checkpoint(c.chain, c.key, c.contract, bogus)
        monkeypatch.chdir(tmp_path)
        status, report, err = verify(capsys, server, c, "--evidence", "fork.evidence")
        assert status == 10, err
        assert "FORK" in err and report["evidence"] == "fork.evidence"
        check_evidence_alone(tmp_path / "fork.evidence", server, forked)
        check_evidence_command(capsys, tmp_path / "fork.evidence", server, c)

        # Pinning another address: the log's own anchors no longer count, and it says so.
        status, report, err = verify(capsys, server, c, "--from", "0x" + "00" * 20)
        assert status == 1 and "the log says it anchors from" in err

        # The API around it: paging, a status filter, and errors that name the field.
        page = get(f"{server.url}/v1/anchors?limit=1")
        assert len(page["anchors"]) == 1 and page["next_after"] == page["anchors"][0]["id"]
        ids = [a["id"] for a in get(f"{server.url}/v1/anchors?limit=1000")["anchors"]]
        newest = get(f"{server.url}/v1/anchors?order=desc&limit=1")
        assert [a["id"] for a in newest["anchors"]] == ids[-1:]
        assert newest["next_before"] == ids[-1]
        older = get(f"{server.url}/v1/anchors?order=desc&before={ids[-1]}&limit=1000")
        assert [a["id"] for a in older["anchors"]] == ids[-2::-1]
        assert older["next_before"] is None
        for query, field in (
            ("status=lost", "status"),
            ("limit=0", "limit"),
            ("after=-1", "after"),
            ("order=up", "order"),
            ("before=3", "before"),
            ("order=desc&after=1", "after"),
        ):
            response = httpx.get(f"{server.url}/v1/anchors?{query}", timeout=10.0)
            assert response.status_code == 400 and response.json()["error"]["field"] == field
    finally:
        server.stop()
    assert c.key.secret.hex() not in server.output().lower()


def check_evidence_alone(path: Path, server: ServerProcess, forked: AnchorRecord) -> None:
    """The evidence file shows the fork with tlog alone: the anchor the log's address sent
    (size 2, a power of two), the checkpoint the log key signed, and the log's own root at
    size 2 with the proof that leads from it to the checkpoint's root."""
    log_key = parse_vkey((server.data_dir / "log.vkey").read_text().strip())
    fork = verify_fork_evidence(parse_fork_evidence(path.read_bytes()), [log_key])
    assert fork.anchors == [forked.as_evidence()] and fork.old == forked.as_evidence()
    assert (fork.tree_size, fork.root_hash) == (2, forked.root_hash)
    with pytest.raises(ProofError):  # what the old check did, and why it proved nothing
        verify_consistency(2, fork.new_size, [], forked.root_hash, fork.other_root)


def check_evidence_command(
    capsys: pytest.CaptureFixture[str], path: Path, server: ServerProcess, c: DeployedChain
) -> None:
    """``meterlog verify evidence`` accepts what ``verify anchor`` wrote: offline, saying what
    it could not check; with --rpc, the anchor found on chain; with another --from, or an
    anchor that is not where the file says, not evidence."""
    key = str(server.data_dir / "log.vkey")
    capsys.readouterr()
    # Offline, or on chain from an address nobody pinned, an anchor proves nothing: anyone
    # may call the contract with the log's origin hash.
    assert main(["verify", "evidence", str(path), "--key", key]) == 1
    err = capsys.readouterr().err
    assert "NOT PROVEN" in err and "not checked offline (give --rpc URL)" in err
    rpc = ["--rpc", c.endpoint]
    assert main(["verify", "evidence", str(path), "--key", key, *rpc, "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["fork"] is False and "NOT PROVEN" in err
    sender = ["--from", address_of(c.key)]
    assert main(["verify", "evidence", str(path), "--key", key, *rpc, *sender]) == 10
    assert "not checked" not in capsys.readouterr().err
    other = ["--from", address_of(c.other_key)]
    assert main(["verify", "evidence", str(path), "--key", key, *rpc, *other]) == 1
    assert "NOT EVIDENCE OF A FORK" in capsys.readouterr().err
    moved = path.with_name("moved.evidence")
    moved.write_bytes(path.read_bytes().replace(b"log_index 0\n", b"log_index 7\n"))
    assert main(["verify", "evidence", str(moved), "--key", key]) == 1  # offline: not proven
    assert "NOT PROVEN" in capsys.readouterr().err
    assert main(["verify", "evidence", str(moved), "--key", key, *rpc, *sender]) == 1
    assert "holds no Anchored event" in capsys.readouterr().err


def test_the_node_down_and_back_while_the_log_goes_on(anvil: DeployedChain, tmp_path: Path) -> None:
    c = anvil
    with flaky_proxy(c.endpoint) as proxy:
        server = start_server(
            tmp_path / "data",
            extra_args=anchoring_flags(c, rpc=proxy.url),
            extra_env=key_env(c),
        )
        try:
            register_edge(server, EDGE_KEY)
            final_anchor_at(server.url, grow(server, 0, 2))
            proxy.down()
            poll(
                lambda: "unreachable" in str(get(f"{server.url}/healthz")["anchor"]["error"]),
                TIMEOUT_S,
                "/healthz to report the node unreachable",
            )
            size = grow(server, 2, 5)  # receipts are still logged, with their proofs
            health = get(f"{server.url}/healthz")["anchor"]
            assert health["lag_entries"] == size - health["anchored_tree_size"] > 0
            proxy.up = True
            final_anchor_at(server.url, size)
            assert get(f"{server.url}/healthz")["anchor"]["error"] is None
        finally:
            server.stop()
    assert c.key.secret.hex() not in server.output().lower()


def test_a_wrong_chain_id_is_refused_at_start(anvil: DeployedChain, tmp_path: Path) -> None:
    c = anvil
    flags = anchoring_flags(c)
    flags[flags.index("--anchor-chain-id") + 1] = "1"
    argv = [str(METERLOG), "serve", "--data-dir", str(tmp_path / "data"), "--port", "0", *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLOG_")}
    done = subprocess.run(
        argv, env={**env, **key_env(c)}, capture_output=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 2
    message = done.stderr.decode()
    assert f"serves chain {c.chain_id}, not the configured chain 1" in message
    assert c.key.secret.hex() not in (message + done.stdout.decode()).lower()


# -- in process, on eth-tester ---------------------------------------------------------------


class ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test's thread, not the main one
        pass


def test_the_in_process_chain_anchors_and_verifies(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path / "data",
        origin="test.example/anchored",
        pool_interval_s=0.05,
        checkpoint_interval_s=3600,
        anchor_rpc="eth-tester",
        anchor_interval_s=0.2,
        anchor_poll_interval_s=0.05,
        anchor_confirmations=3,
    )
    app = create_app(config)
    server = ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, TIMEOUT_S, "uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        token = (config.data_dir / "operator.token").read_text().strip()
        body = {"action": "register", "edge": EDGE_KEY.name, "valid_from_ms": 0}
        body["key"] = format_vkey(EDGE_KEY.verifier())
        with httpx.Client(timeout=10.0) as client:
            response = client.post(
                f"{url}/v1/admin/edge-keys", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200, response.text
            size = submit(client, url, [receipt(f"x-{i}", EDGE_KEY) for i in range(4)]).json()
            tree_size = max(r["index"] for r in size["results"]) + 1
            final = final_anchor_at(url, tree_size)
            anchoring = app.state.log.anchoring
            assert final["chain_id"] == anchoring.chain.chain_id

            log_key = parse_vkey((config.data_dir / "log.vkey").read_text().strip())
            verdict = verify_anchors(
                client, url, anchoring.chain, str(anchoring.contract), [log_key]
            )
            assert verdict.exit_code == 0, verdict.report.to_json()

            forged = Checkpoint(config.origin, 1, bytes(32))
            anchor_checkpoint(anchoring.chain, anchoring._key, str(anchoring.contract), forged)
            verdict = verify_anchors(
                client, url, anchoring.chain, str(anchoring.contract), [log_key]
            )
            assert verdict.exit_code == 10 and len(verdict.forks) == 1
            fork = verify_fork_evidence(verdict.forks[0], [log_key])
            assert fork.tree_size == 1 and fork.root_hash == bytes(32)
            assert len(find_anchors(anchoring.chain, str(anchoring.contract), config.origin)) >= 2
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT_S)
