"""The edge's commands and ``meterlog token``: in process (``cli.main.main``) on real files,
against a real ``meterlog serve`` on loopback where a log is needed; and the base install
(no web framework, no database driver) running the edge commands in a subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from edge_signer.catalog import load_catalog
from edge_signer.signer import Delivery, EdgeSigner
from edge_signer.spool import Spool
from tests.log_server.server_process import ServerProcess, register_edge, running_server
from tlog.entry import encode_entry
from tlog.note import SigningKey, format_skey, format_vkey
from tlog.token import format_token, parse_token
from verifier.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

EDGE = SigningKey("edge-cli-test", bytes([41]) * 32)
MARKET = SigningKey("market.cli", bytes([42]) * 32)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("log") / "data") as server:
        register_edge(server, EDGE)
        yield server


@pytest.fixture
def market_key(tmp_path: Path) -> Path:
    path = tmp_path / "market.key"
    path.write_text(format_skey(MARKET) + "\n")
    (tmp_path / "market.vkey").write_text(format_vkey(MARKET.verifier()) + "\n")
    return path


def receipts_file(path: Path, count: int, key: SigningKey = EDGE) -> list[str]:
    """A JSON Lines file of ``count`` receipts served now; their request ids."""
    signer = EdgeSigner(key)
    lines, ids = [], []
    for i in range(count):
        request_id = f"cli-{time.time_ns()}-{i}"
        delivery = Delivery(request_id, "acme-ai", "tok-1", "training", f"sha256:{i:064x}",
                            "acct:alice", "sha256:" + "ab" * 32, 100, "miss")  # fmt: skip
        signed = signer.sign(delivery, served_at_ms=time.time_ns() // 1_000_000)
        lines.append(encode_entry(signed.receipt).decode())
        ids.append(request_id)
    path.write_text("\n".join(lines) + "\n")
    return ids


# -- token ---------------------------------------------------------------------------------------


def test_token_issue_and_verify(
    capsys: pytest.CaptureFixture[str], market_key: Path, tmp_path: Path
) -> None:
    content = "sha256:" + "ab" * 32
    status, out, err = run(capsys, "token", "issue", "--key-file", str(market_key),
                           "--consumer", "acme-ai", "--scope", "training", "--job-id", "job-1",
                           "--ttl", "60", "--content", content, "--token-id", "t-9")  # fmt: skip
    assert status == EXIT_OK, err
    token = parse_token(out.strip())
    assert (token.consumer_id, token.scope, token.job_id, token.token_id) == (
        "acme-ai", "training", "job-1", "t-9")  # fmt: skip
    assert token.expires_at_ms - token.issued_at_ms == 60_000
    assert token.content == (content,)
    assert "issued training token t-9 to acme-ai for job job-1" in err

    vkey = str(tmp_path / "market.vkey")
    status, out, err = run(capsys, "token", "verify", "--key", vkey, "--json", out.strip())
    assert status == EXIT_OK, err
    assert json.loads(out)["consumer_id"] == "acme-ai"
    later = str(token.expires_at_ms + 1)
    status, _, err = run(capsys, "token", "verify", "--key", vkey, "--now-ms", later,
                         format_token(token))  # fmt: skip
    assert status == EXIT_FAILED and "expired" in err
    status, _, err = run(capsys, "token", "verify", "--key", vkey, "meterlog-token-v1.x.y")
    assert status == EXIT_FAILED and "INVALID" in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--consumer", "a b", "--scope", "training"], "--consumer"),
        (["--consumer", "acme", "--scope", "training", "--content", "md5:x"], "--content"),
        (["--consumer", "acme", "--scope", "training", "--job-id", ""], "--job-id"),
        (["--consumer", "acme", "--scope", "training", "--ttl", "0"], "--ttl"),
    ],
)
def test_token_issue_names_the_bad_flag(
    capsys: pytest.CaptureFixture[str], market_key: Path, argv: list[str], flag: str
) -> None:
    status, out, err = run(capsys, "token", "issue", "--key-file", str(market_key), *argv)
    assert status == EXIT_USAGE
    assert out == ""
    assert flag in err


# -- catalog -------------------------------------------------------------------------------------


def test_edge_catalog(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    out_file = tmp_path / "catalog.json"
    status, _, err = run(capsys, "edge", "catalog", str(tmp_path / "d"), "--creator", "acct:a",
                         "--license", "https://l.test/1", "--scope", "training",
                         "--out", str(out_file))  # fmt: skip
    assert status == EXIT_OK, err
    item = load_catalog(out_file).lookup("/x.txt")
    assert item is not None and item.scopes == ("training",)
    status, _, err = run(capsys, "edge", "catalog", str(tmp_path / "d"), "--creator", "a b",
                         "--license", "https://l.test/1")  # fmt: skip
    assert status == EXIT_USAGE and "--creator" in err


# -- submit, run, status, requeue, prune ---------------------------------------------------------


def test_edge_submit_spools_then_verifies(
    capsys: pytest.CaptureFixture[str], log: ServerProcess, tmp_path: Path
) -> None:
    file = tmp_path / "r.jsonl"
    ids = receipts_file(file, 3)
    spool = str(tmp_path / "spool")
    common = ["--spool", spool, "--log", log.url, "--log-key", str(log.data_dir / "log.vkey")]
    status, out, err = run(capsys, "edge", "submit", str(file), *common, "--json")
    assert status == EXIT_OK, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["request_id"] for line in lines] == ids
    assert {line["state"] for line in lines} == {"verified"}
    assert "3 receipt(s): 3 verified" in err
    # Again: nothing new is spooled, and each is still verified once.
    status, _, err = run(capsys, "edge", "submit", str(file), *common)
    assert status == EXIT_OK and "spooled 0 receipt(s) (3 were spooled before)" in err
    status, out, _ = run(capsys, "edge", "status", "--spool", spool, "--json")
    assert status == EXIT_OK
    counters = json.loads(out)
    assert (counters["spooled"], counters["verified"], counters["pending"]) == (3, 3, 0)
    assert counters["oldest_pending_age_ms"] is None
    status, _, err = run(capsys, "edge", "prune", "--spool", spool, "--older-than-days", "1")
    assert status == EXIT_OK and "pruned 0" in err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_edge_submit_to_a_log_that_is_down_keeps_receipts_for_run(
    capsys: pytest.CaptureFixture[str], log: ServerProcess, tmp_path: Path
) -> None:
    file = tmp_path / "r.jsonl"
    receipts_file(file, 2)
    spool = str(tmp_path / "spool")
    vkey = str(log.data_dir / "log.vkey")
    status, _, err = run(capsys, "edge", "submit", str(file), "--spool", spool, "--log",
                         f"http://127.0.0.1:{closed_port()}", "--log-key", vkey,
                         "--retries", "1")  # fmt: skip
    assert status == EXIT_UNAVAILABLE, err
    assert "receipts stay spooled" in err and "2 pending" in err
    status, out, _ = run(capsys, "edge", "status", "--spool", spool, "--json")
    assert json.loads(out)["pending"] == 2
    status, _, err = run(capsys, "edge", "run", "--spool", spool, "--log", log.url,
                         "--log-key", vkey, "--exit-when-drained")  # fmt: skip
    assert status == EXIT_OK, err
    assert "2 logged" in err and "0 pending" in err


def test_rejected_receipts_fail_submit_and_can_be_requeued(
    capsys: pytest.CaptureFixture[str], log: ServerProcess, tmp_path: Path
) -> None:
    stranger = SigningKey("edge-cli-stranger", bytes([43]) * 32)
    file = tmp_path / "r.jsonl"
    receipts_file(file, 2, stranger)
    spool = str(tmp_path / "spool")
    common = ["--spool", spool, "--log", log.url, "--log-key", str(log.data_dir / "log.vkey")]
    status, _, err = run(capsys, "edge", "submit", str(file), *common)
    assert status == EXIT_FAILED
    assert "2 rejected" in err and "receipt.key_id" in err
    register_edge(log, stranger)
    status, _, err = run(capsys, "edge", "requeue", "--spool", spool)
    assert status == EXIT_OK and "requeued 2 rejected" in err
    status, _, err = run(capsys, "edge", "run", *common, "--exit-when-drained")
    assert status == EXIT_OK, err
    with Spool(Path(spool)) as opened:
        assert opened.status().verified == 2


def test_bad_lines_are_not_spooled(
    capsys: pytest.CaptureFixture[str], log: ServerProcess, tmp_path: Path
) -> None:
    file = tmp_path / "r.jsonl"
    receipts_file(file, 1)
    with file.open("a") as out:
        out.write('{"kind": "receipt"}\nnot json\n')
    status, _, err = run(capsys, "edge", "submit", str(file), "--spool", str(tmp_path / "s"),
                         "--log", log.url, "--log-key", str(log.data_dir / "log.vkey"))  # fmt: skip
    assert status == EXIT_FAILED
    assert "line 2: not sent" in err and "line 3: not sent" in err
    assert "1 receipt(s): 1 verified" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["edge", "status", "--spool", "{tmp}/nowhere"],
        ["edge", "run", "--spool", "{tmp}/nowhere", "--log", "http://x", "--log-key", "k+1+x"],
        ["edge", "submit", "{tmp}/missing.jsonl", "--log", "http://x", "--log-key", "{tmp}/k"],
        ["edge", "submit", "{tmp}/r.jsonl", "--log", "ftp://x", "--log-key", "{tmp}/k"],
        ["edge", "serve-demo", "{tmp}/nowhere", "--key-file", "{tmp}/k", "--marketplace-key",
         "{tmp}/k", "--log", "http://x", "--log-key", "{tmp}/k"],
        ["edge", "serve-demo", "{tmp}", "--key-file", "{tmp}/r.jsonl", "--marketplace-key",
         "{tmp}/k", "--log", "http://x", "--log-key", "{tmp}/k"],
    ],
)  # fmt: skip
def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "r.jsonl").write_text("")
    status, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert status == EXIT_USAGE, err
    assert err.startswith("meterlog: ")


def test_one_submitter_per_spool_on_the_command_line(
    capsys: pytest.CaptureFixture[str], log: ServerProcess, tmp_path: Path
) -> None:
    from edge_signer.submitter import submitter_lock  # noqa: PLC0415

    spool = tmp_path / "spool"
    Spool(spool).close()
    with submitter_lock(spool):
        status, _, err = run(capsys, "edge", "run", "--spool", str(spool), "--log", log.url,
                             "--log-key", str(log.data_dir / "log.vkey"))  # fmt: skip
    assert status == EXIT_USAGE and "another submitter" in err


# -- the base install ----------------------------------------------------------------------------

BASE_INSTALL = """
import sys
for name in ("starlette", "uvicorn", "peewee", "apscheduler", "prometheus_client", "psycopg2",
             "web3"):
    sys.modules[name] = None  # importing any of them now fails, as on a base install
from cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def base_install(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BASE_INSTALL, *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_edge_commands_run_on_the_base_install(log: ServerProcess, tmp_path: Path) -> None:
    file = tmp_path / "r.jsonl"
    receipts_file(file, 2)
    spool = str(tmp_path / "spool")
    submit = base_install("edge", "submit", str(file), "--spool", spool, "--log", log.url,
                          "--log-key", str(log.data_dir / "log.vkey"))  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    status = base_install("edge", "status", "--spool", spool, "--json")
    assert json.loads(status.stdout)["verified"] == 2
    (tmp_path / "m.key").write_text(format_skey(MARKET) + "\n")
    token = base_install("token", "issue", "--key-file", str(tmp_path / "m.key"),
                         "--consumer", "c", "--scope", "preview")  # fmt: skip
    assert token.returncode == 0 and token.stdout.startswith("meterlog-token-v1.")
    demo = base_install("edge", "serve-demo", str(tmp_path), "--key-file", "x",
                        "--marketplace-key", "x", "--log", log.url, "--log-key", "x")  # fmt: skip
    assert demo.returncode == EXIT_USAGE
    assert "pip install 'meterlog[edge]'" in demo.stderr
