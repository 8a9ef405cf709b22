"""Split view: two logs with one origin and one key that agree on 300 entries, then diverge.

Log A grows to 400 entries, then 512, log B to 550, each from the same first 300 (so both
have a checkpoint of size 300 with the same root). A proxy shows a monitor log A, then log B;
the monitor must stop with exit 10 and a self-contained evidence file that ``verify evidence``
confirms offline — at 512, a power of two, where the consistency proof leaves the old root
out and the evidence needs B's own root at 512. The witness, having cosigned A, must answer B
with 409/422 and cosign nothing of B, both when fed directly and when B's own server submits
to it; it keeps B's checkpoint as evidence only when the proof B's log sent proves the fork.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.main import main
from tests.log_server.server_process import ServerProcess
from tests.verifier.logs import (
    LOG_KEY,
    WITNESS_KEY,
    TamperProxy,
    build_log,
    free_port,
    log_entries,
    receipt,
    registration,
    running_witness,
    serve_log,
)
from tlog.checkpoint import open_checkpoint
from tlog.evidence import parse_fork_evidence, verify_fork_evidence
from tlog.note import ALG_COSIGNATURE_V1, format_vkey
from tlog.parsing import decode_b64
from tlog.witness import AddCheckpoint, format_add_checkpoint, origin_hash, parse_size_body
from verifier.client import LogClient, VerifiedTree
from verifier.witness import WitnessState

PREFIX = 300


@dataclass(frozen=True)
class SplitView:
    a: ServerProcess
    b: ServerProcess
    root: Path
    vkey_file: Path


def _build(data_dir: Path, branch: str, *extra: int) -> None:
    """The shared 300 entries, then ``extra`` entries of the branch, a checkpoint each."""
    storage = build_log(data_dir)
    log_entries(storage, [registration()])
    log_entries(storage, [receipt(i) for i in range(1, PREFIX)])
    at = 0
    for count in extra:
        log_entries(storage, [receipt(at + i, prefix=branch) for i in range(count)])
        at += count
    storage.close()


@pytest.fixture(scope="module")
def split_view(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitView]:
    root = tmp_path_factory.mktemp("split")
    _build(root / "a", "a", 100, 112)
    _build(root / "b", "b", 250)
    vkey_file = root / "log.vkey"
    vkey_file.write_text(format_vkey(LOG_KEY.verifier()) + "\n", encoding="utf-8")
    with serve_log(root / "a") as a, serve_log(root / "b") as b:
        yield SplitView(a, b, root, vkey_file)


def _checkpoint(url: str, size: int | None = None) -> bytes:
    path = "/checkpoint" if size is None else f"/v1/checkpoints/{size}"
    response = httpx.get(url + path)
    assert response.status_code == 200, response.text
    return response.content


def test_the_two_logs_share_a_prefix_and_diverge(split_view: SplitView) -> None:
    a300 = _checkpoint(split_view.a.url, PREFIX)
    b300 = _checkpoint(split_view.b.url, PREFIX)
    key = [LOG_KEY.verifier()]
    assert open_checkpoint(a300, key).checkpoint == open_checkpoint(b300, key).checkpoint
    a, b = (
        open_checkpoint(_checkpoint(s.url), key).checkpoint for s in (split_view.a, split_view.b)
    )
    assert (a.origin, a.tree_size) == (b.origin, 512) and b.tree_size == 550


@pytest.mark.parametrize("full", [False, True])
def test_the_monitor_detects_the_fork(
    split_view: SplitView, tmp_path: Path, full: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    argv = ["verify", "monitor", "--once", "--state", str(state), "--key",
            str(split_view.vkey_file), "--json", *(["--full"] if full else [])]  # fmt: skip
    with TamperProxy(split_view.a.url) as proxy:
        assert main([*argv, "--log", proxy.url]) == 0
        proxy.upstream = split_view.b.url
        assert main([*argv, "--log", proxy.url]) == 10
        assert main([*argv, "--log", proxy.url]) == 10  # the state still trusts A: still a fork
    out = capsys.readouterr()
    assert "FORK DETECTED" in out.err
    fork = next(json.loads(line) for line in out.out.splitlines() if '"fork"' in line)
    evidence = Path(fork["evidence"])
    assert evidence == state / "fork-512-550.evidence"
    found = verify_fork_evidence(parse_fork_evidence(evidence.read_bytes()), [LOG_KEY.verifier()])
    assert (found.tree_size, found.new_size) == (512, 550)
    assert found.root_hash == _root(split_view.a.url, 512) != found.other_root
    assert found.other_root == root_hash_at(split_view.b.url, 512)
    # Checked offline by anyone with the log's key: exit 10, "this proves a fork".
    assert main(["verify", "evidence", str(evidence), "--key", str(split_view.vkey_file)]) == 10
    saved = json.loads((state / "state.json").read_text())
    assert "\n512\n" in saved["checkpoint"]


def test_a_forked_log_is_caught_by_consistency_and_inclusion(
    split_view: SplitView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "a.checkpoint"
    old.write_bytes(_checkpoint(split_view.a.url))
    key = str(split_view.vkey_file)
    argv = ["verify", "consistency", "--log", split_view.b.url, "--key", key, str(old),
            "--evidence-dir", str(tmp_path), "--no-cache"]  # fmt: skip
    assert main(argv) == 10
    assert main(["verify", "evidence", str(tmp_path / "fork-512-550.evidence"), "--key", key]) == 10
    answer = httpx.get(f"{split_view.a.url}/v1/receipts/edge-1/a-5").json()
    bundle = tmp_path / "a-5.tlog-proof"
    bundle.write_text(answer["bundle"], encoding="utf-8")
    argv = ["verify", "inclusion", "--log", split_view.b.url, "--key", key, "--bundle",
            str(bundle), "--evidence-dir", str(tmp_path / "inc"), "--no-cache"]  # fmt: skip
    (tmp_path / "inc").mkdir()
    assert main(argv) == 10
    assert list((tmp_path / "inc").glob("fork-*.evidence"))
    # The shared prefix is no fork: A's checkpoint of 300 is consistent with B's 550.
    prefix = tmp_path / "a300.checkpoint"
    prefix.write_bytes(_checkpoint(split_view.a.url, PREFIX))
    assert main(["verify", "consistency", "--log", split_view.b.url, "--key", key,
                 str(prefix), "--no-cache"]) == 0  # fmt: skip
    capsys.readouterr()


def _root(url: str, size: int) -> bytes:
    return open_checkpoint(_checkpoint(url, size), [LOG_KEY.verifier()]).checkpoint.root_hash


def root_hash_at(url: str, size: int) -> bytes:
    """The root of the first ``size`` entries of the log at ``url``, from its tiles."""
    with LogClient(url) as client:
        signed = open_checkpoint(client.fetch_checkpoint(), [LOG_KEY.verifier()])
        return VerifiedTree(client, signed).prefix_proof(size)[1]


def _proof(url: str, old: int, new: int) -> tuple[bytes, ...]:
    answer = httpx.get(f"{url}/v1/proofs/consistency?old_size={old}&new_size={new}").json()
    return tuple(decode_b64(h, "proof") for h in answer["proof"])


def _add(witness_url: str, old: int, proof: tuple[bytes, ...], note: bytes) -> httpx.Response:
    body = format_add_checkpoint(AddCheckpoint(old, proof, note))
    return httpx.post(f"{witness_url}/add-checkpoint", content=body, timeout=10)


def test_the_witness_refuses_the_second_branch(split_view: SplitView, tmp_path: Path) -> None:
    a, b = split_view.a.url, split_view.b.url
    with running_witness(tmp_path / "w", free_port()) as witness:
        assert _add(witness.url, 0, (), _checkpoint(a, PREFIX)).status_code == 200
        a400 = _checkpoint(a, 400)
        assert _add(witness.url, PREFIX, _proof(a, PREFIX, 400), a400).status_code == 200
        # B, honestly from what the witness cosigned: its proof shows B's root at 400.
        refused = _add(witness.url, 400, _proof(b, 400, 550), _checkpoint(b))
        assert refused.status_code == 422, refused.text
        # The same again, and junk: nothing more is kept.
        assert _add(witness.url, 400, _proof(b, 400, 550), _checkpoint(b)).status_code == 422
        junk = (b"\x00" * 32,) * len(_proof(b, 400, 550))
        assert _add(witness.url, 400, junk, _checkpoint(b)).status_code == 422
        # B, pretending to be new to the witness: told the size the witness holds.
        stale = _add(witness.url, 0, (), _checkpoint(b))
        assert stale.status_code == 409
        assert stale.headers["content-type"].startswith("text/x.tlog.size")
        assert parse_size_body(stale.content) == 400
        # B, claiming the witness's size is its old size 300: stale again, not cosigned.
        assert _add(witness.url, PREFIX, _proof(b, PREFIX, 550), _checkpoint(b)).status_code == 409
        latest = httpx.get(f"{witness.url}/{origin_hash(LOG_KEY.name)}/checkpoint")
        assert latest.status_code == 200
        witness_key = WITNESS_KEY.verifier(ALG_COSIGNATURE_V1)
        cosigned = open_checkpoint(latest.content, [LOG_KEY.verifier()], witnesses=[witness_key])
        assert cosigned.checkpoint.tree_size == 400 and cosigned.witnesses == (witness_key,)
        assert cosigned.checkpoint == open_checkpoint(a400, [LOG_KEY.verifier()]).checkpoint
    # One row, whose evidence anyone checks offline with the log's key: a fork at 400.
    state = WitnessState(tmp_path / "w" / "witness.db")
    rows = state.refused(LOG_KEY.name)
    state.close()
    assert [(row[0], row[1]) for row in rows] == [(400, 550)]
    evidence = tmp_path / "witness.evidence"
    evidence.write_bytes(rows[0][3])
    assert main(["verify", "evidence", str(evidence), "--key", str(split_view.vkey_file)]) == 10


def test_the_second_branch_gets_no_cosignature_from_its_own_server(
    tmp_path: Path, split_view: SplitView
) -> None:
    """B's real server, configured with the witness that cosigned A, submits on its own:
    the witness refuses every round and B's GET /checkpoint, needing the quorum, has none."""
    port = free_port()
    witness_vkey = format_vkey(WITNESS_KEY.verifier(ALG_COSIGNATURE_V1))
    policy = tmp_path / "witnesses.policy"
    policy.write_text(f"witness w {witness_vkey} http://127.0.0.1:{port}\nquorum w\n")
    with running_witness(tmp_path / "w", port) as witness:
        assert _add(witness.url, 0, (), _checkpoint(split_view.a.url)).status_code == 200
        _build(tmp_path / "b", "b", 250)
        args = ["--witness-policy", str(policy), "--witness-interval", "0.05"]
        with serve_log(tmp_path / "b", extra_args=args) as b:
            deadline = time.monotonic() + 20
            while "refused size" not in b.output():  # the witness said 422 at least once
                assert time.monotonic() < deadline, b.output()
                time.sleep(0.05)
            assert httpx.get(f"{b.url}/checkpoint").status_code == 503
        latest = httpx.get(f"{witness.url}/{origin_hash(LOG_KEY.name)}/checkpoint").content
        assert b"\n512\n" in latest
    # B's server sent the proof from 512, a power of two, which leaves A's root out: it
    # shows no root of B's at 512, so it is no evidence, and the witness kept none.
    state = WitnessState(tmp_path / "w" / "witness.db")
    assert state.refused(LOG_KEY.name) == []
    state.close()
