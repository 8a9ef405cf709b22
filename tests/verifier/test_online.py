"""The online commands against a real ``meterlog serve``: inclusion, consistency, receipts get.

Every command runs in this process through ``cli.main.main`` and talks to the server over
loopback; the proofs it reports come from tiles, which the tests confirm by counting what a
proxy in front of the server was asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cli.main import main
from tests.verifier.conftest import HEALTHY_SIZE, ServedLog
from tests.verifier.logs import OPERATOR_KEY, TamperProxy
from tlog.bundle import parse_bundle, verify_bundle
from tlog.entry import Receipt, decode_entry
from tlog.note import format_vkey


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, object]]]:
    """Run ``meterlog`` with --json; the exit code and the JSON lines it printed."""
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def test_inclusion_by_index_computes_the_proof_from_tiles(
    healthy_log: ServedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TamperProxy(healthy_log.url) as proxy:
        for index in (0, 255, 256, 511, 512, 600):
            out = tmp_path / f"{index}.tlog-proof"
            code, reports = run(
                capsys, "verify", "inclusion", "--log", proxy.url, "--key",
                str(healthy_log.vkey_file), "--index", str(index), "--out", str(out),
                "--cache", str(tmp_path / "cache"),
            )  # fmt: skip
            assert code == 0, reports
            assert reports[0]["index"] == index and reports[0]["tree_size"] == HEALTHY_SIZE
            verified = verify_bundle(parse_bundle(out.read_bytes()), [healthy_log.server.log_key])
            assert verified.index == index
        assert not [p for p in proxy.fetched if p.startswith("/v1/proofs")]
        assert any(p.startswith("/tile/") for p in proxy.fetched)


def test_the_tile_cache_saves_fetches(
    healthy_log: ServedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["verify", "inclusion", "--key", str(healthy_log.vkey_file), "--index", "3",
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    with TamperProxy(healthy_log.url) as proxy:
        assert run(capsys, *argv, "--log", proxy.url)[0] == 0
        first = [p for p in proxy.fetched if p.startswith("/tile/")]
        proxy.fetched.clear()
        assert run(capsys, *argv, "--log", proxy.url)[0] == 0
        second = [p for p in proxy.fetched if p.startswith("/tile/")]
    full_tiles = [p for p in first if ".p/" not in p]
    assert full_tiles  # tile/0/000 and the entry bundle 000
    assert not set(full_tiles) & set(second)  # only partial tiles are fetched again
    assert (tmp_path / "cache" / "tile" / "0" / "000").is_file()


def test_inclusion_by_request_id_and_by_bundle(
    healthy_log: ServedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(healthy_log.vkey_file)
    code, reports = run(
        capsys, "verify", "inclusion", "--log", healthy_log.url, "--key", key,
        "--edge", "edge-1", "--request-id", "req-41", "--no-cache",
    )  # fmt: skip
    assert code == 0 and reports[0]["request_id"] == "req-41" and reports[0]["index"] == 42
    answer = httpx.get(f"{healthy_log.url}/v1/receipts/edge-1/req-41").json()
    bundle = tmp_path / "r.tlog-proof"
    bundle.write_text(answer["bundle"], encoding="utf-8")
    code, reports = run(
        capsys, "verify", "inclusion", "--log", healthy_log.url, "--key", key,
        "--bundle", str(bundle), "--no-cache",
    )  # fmt: skip
    assert code == 0 and reports[0]["index"] == 42
    names = [c["name"] for c in reports[0]["checks"]]  # type: ignore[union-attr]
    assert "consistency" in names and "inclusion" in names
    # A request id the log does not hold: the log's 404 is a failed verification.
    code, _ = run(
        capsys, "verify", "inclusion", "--log", healthy_log.url, "--key", key,
        "--edge", "edge-1", "--request-id", "nope", "--no-cache",
    )  # fmt: skip
    assert code == 1


def test_inclusion_usage_errors(healthy_log: ServedLog, capsys: pytest.CaptureFixture[str]) -> None:
    key = str(healthy_log.vkey_file)
    base = ["verify", "inclusion", "--log", healthy_log.url, "--key", key, "--no-cache"]
    assert main([*base]) == 2
    assert main([*base, "--index", "-1"]) == 2
    assert main([*base, "--index", "1", "--edge", "edge-1", "--request-id", "r"]) == 2
    assert main([*base, "--edge", "edge-1"]) == 2
    assert main(["verify", "inclusion", "--log", "ftp://x", "--key", key, "--index", "1"]) == 2
    assert main(["verify", "inclusion", "--log", healthy_log.url, "--index", "1"]) == 2
    capsys.readouterr()


def test_an_index_past_the_tree_fails(
    healthy_log: ServedLog, capsys: pytest.CaptureFixture[str]
) -> None:
    code, reports = run(
        capsys, "verify", "inclusion", "--log", healthy_log.url, "--key",
        str(healthy_log.vkey_file), "--index", str(HEALTHY_SIZE), "--no-cache",
    )  # fmt: skip
    assert code == 1 and reports[0]["ok"] is False


def test_an_unreachable_log_is_exit_3(
    healthy_log: ServedLog, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", "inclusion", "--log", "http://127.0.0.1:9", "--key",
                 str(healthy_log.vkey_file), "--index", "1", "--timeout", "2"])  # fmt: skip
    assert code == 3
    capsys.readouterr()


@pytest.mark.parametrize(("old", "new"), [("1", "latest"), ("1", "501"), ("501", "601")])
def test_consistency_between_sizes(
    healthy_log: ServedLog, old: str, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, reports = run(
        capsys, "verify", "consistency", "--log", healthy_log.url, "--key",
        str(healthy_log.vkey_file), old, new, "--no-cache",
    )  # fmt: skip
    assert code == 0, reports
    assert reports[-1]["old_size"] == int(old)


def test_consistency_between_files(
    healthy_log: ServedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.checkpoint"
    old.write_bytes(httpx.get(f"{healthy_log.url}/v1/checkpoints/501").content)
    new = tmp_path / "new.checkpoint"
    new.write_bytes(httpx.get(f"{healthy_log.url}/checkpoint").content)
    code, reports = run(
        capsys, "verify", "consistency", "--log", healthy_log.url, "--key",
        str(healthy_log.vkey_file), str(new), str(old), "--no-cache",
    )  # fmt: skip
    assert code == 0 and (reports[-1]["old_size"], reports[-1]["new_size"]) == (501, 601)
    code, _ = run(
        capsys, "verify", "consistency", "--log", healthy_log.url, "--key",
        str(healthy_log.vkey_file), "7", "--no-cache",
    )  # fmt: skip
    assert code == 1  # no checkpoint of size 7 was ever signed


def test_receipts_get_writes_only_verified_bundles(
    healthy_log: ServedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    operator = format_vkey(OPERATOR_KEY.verifier())
    code, reports = run(
        capsys, "receipts", "get", "--log", healthy_log.url, "--key",
        str(healthy_log.vkey_file), "--consumer", "consumer-1", "--out", str(out),
        "--operator-key", operator, "--no-cache",
    )  # fmt: skip
    assert code == 0
    expected = [i + 1 for i in range(600) if i % 3 == 1]  # receipt i is entry i + 1
    assert sorted(int(str(r["index"])) for r in reports) == expected
    for index in expected:
        bundle = (out / f"receipt-{index}.tlog-proof").read_bytes()
        verified = verify_bundle(parse_bundle(bundle), [healthy_log.server.log_key])
        entry = decode_entry(verified.entry)
        assert isinstance(entry, Receipt) and entry.consumer_id == "consumer-1"
        assert (out / f"receipt-{index}.json").read_bytes() == verified.entry
    # By job: only that consumer's receipts of job-7.
    code, reports = run(
        capsys, "receipts", "get", "--log", healthy_log.url, "--key",
        str(healthy_log.vkey_file), "--consumer", "consumer-1", "--job", "job-7",
        "--out", str(tmp_path / "job"), "--no-cache",
    )  # fmt: skip
    assert code == 0  # the job's receipts of other consumers are skipped, not written
    written = sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in (tmp_path / "job").glob("*.tlog-proof")
    )
    assert written == [i + 1 for i in range(600) if i % 10 == 0 and i % 3 == 1]
    assert len(reports) == 60  # every receipt of job-7 was fetched and checked
