"""Tampering: a server that lies is caught by every command that reads what it lied about.

A :class:`TamperProxy` in front of the healthy log rewrites one kind of answer: an entry
bundle with one entry changed, a hash tile with one byte wrong, a tree truncated after the
first 256 entries (the checkpoint still claims 601), or a checkpoint signed by another key
of the same name. Each online command that reads the tampered bytes must fail with exit 1:
not succeed, not crash, not claim a fork (10) or an outage (3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main
from tests.verifier.conftest import ServedLog
from tests.verifier.logs import OTHER_LOG_KEY, TamperProxy
from tlog.checkpoint import parse_checkpoint, sign_checkpoint

Fault = Callable[[str, int, bytes], tuple[int, bytes]]


def modified_bundle(path: str, status: int, body: bytes) -> tuple[int, bytes]:
    if path == "/tile/entries/000":
        changed = body.replace(b'"cache":"hit"', b'"cache":"hiT"', 1)
        assert changed != body
        return status, changed
    return status, body


def wrong_tile(path: str, status: int, body: bytes) -> tuple[int, bytes]:
    if path == "/tile/1/000.p/2":  # read by every check of the tree of 601
        return status, body[:40] + bytes([body[40] ^ 0x01]) + body[41:]
    return status, body


_PAST_FIRST_TILE = re.compile(r"^/tile/(0|entries)/(00[1-9])")


def truncated_tree(path: str, status: int, body: bytes) -> tuple[int, bytes]:
    if _PAST_FIRST_TILE.match(path):
        return 404, b'{"error": {"field": "request", "reason": "not found"}}'
    return status, body


def other_key(path: str, status: int, body: bytes) -> tuple[int, bytes]:
    if path == "/checkpoint":
        text = body[: body.rfind(b"\n\n") + 1].decode()
        return status, sign_checkpoint(parse_checkpoint(text), [OTHER_LOG_KEY.signer()])
    return status, body


FAULTS: dict[str, Fault] = {
    "modified entry bundle": modified_bundle,
    "wrong tile": wrong_tile,
    "truncated tree": truncated_tree,
    "checkpoint signed by another key": other_key,
}

COMMANDS: dict[str, list[str]] = {
    "inclusion": ["verify", "inclusion", "--index", "3", "--no-cache"],
    "consistency": ["verify", "consistency", "1", "latest", "--no-cache"],
    "monitor --full": ["verify", "monitor", "--full", "--once"],
    "receipts get": ["receipts", "get", "--consumer", "consumer-1", "--no-cache"],
}
# consistency reads hashes only, never an entry bundle.
NOT_READ = {("modified entry bundle", "consistency")}


@pytest.mark.parametrize(
    ("fault", "command"),
    [(f, c) for f in sorted(FAULTS) for c in sorted(COMMANDS) if (f, c) not in NOT_READ],
)
def test_every_command_catches_the_lie(
    healthy_log: ServedLog,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    command: str,
) -> None:
    argv = [*COMMANDS[command], "--key", str(healthy_log.vkey_file), "--json"]
    argv += ["--evidence-dir", str(tmp_path)]
    if command == "monitor --full":
        argv += ["--state", str(tmp_path / "state")]
    if command == "receipts get":
        argv += ["--out", str(tmp_path / "out")]
    with TamperProxy(healthy_log.url) as honest:
        assert main([*argv, "--log", honest.url]) == 0, capsys.readouterr().err
        capsys.readouterr()
    if command == "monitor --full":
        argv[argv.index("--state") + 1] = str(tmp_path / "state-2")
    if command == "receipts get":
        argv[argv.index("--out") + 1] = str(tmp_path / "out-2")
    with TamperProxy(healthy_log.url, FAULTS[fault]) as liar:
        code = main([*argv, "--log", liar.url])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert any(line.get("ok") is False for line in lines), captured.out
    assert not list(tmp_path.glob("*.evidence"))
    if command == "receipts get":
        assert not list((tmp_path / "out-2").glob("*.tlog-proof"))


def test_a_wrong_leaf_tile_fails_the_proof_that_reads_it(
    healthy_log: ServedLog, capsys: pytest.CaptureFixture[str]
) -> None:
    def wrong_leaf_tile(path: str, status: int, body: bytes) -> tuple[int, bytes]:
        if path == "/tile/0/000":
            return status, bytes(32) + body[32:]  # leaf 0's hash zeroed
        return status, body

    argv = ["verify", "inclusion", "--key", str(healthy_log.vkey_file), "--no-cache"]
    with TamperProxy(healthy_log.url, wrong_leaf_tile) as liar:
        assert main([*argv, "--log", liar.url, "--index", "1"]) == 1  # its proof reads leaf 0
        assert main([*argv, "--log", liar.url, "--index", "300"]) == 0  # its proof does not
    assert "does not match" in capsys.readouterr().err
