"""The ``meterlog`` command: keygen, verify checkpoint, verify bundle, demo, exit codes.

Runs the real entry point in process (``cli.main.main``) on real files, plus one run of the
installed console script, so the command a user types is covered too.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from tlog.note import parse_skey, parse_vkey
from verifier.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE


@pytest.fixture
def sum_golang(vectors: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """The real sum.golang.org checkpoint and its published key, as files."""
    vector = vectors["signed_note"]["sum_golang_org_real_checkpoint"]
    note = tmp_path / "sum.checkpoint"
    note.write_text(vector["signed_note"], encoding="utf-8")
    key = tmp_path / "sum.vkey"
    key.write_text(vector["vkey"] + "\n", encoding="utf-8")
    return note, key


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--receipts", "5"]) == EXIT_OK
    return out


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("keygen", "verify", "demo"):
        assert command in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("meterlog")
    result = subprocess.run(
        [str(script), "verify", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "checkpoint" in result.stdout
    assert "bundle" in result.stdout


def test_keygen_writes_a_private_key_and_prints_its_vkey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "log.key"
    assert main(["keygen", "--name", "example.com/log", "--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out.strip()
    key = parse_skey(out.read_text(encoding="utf-8").strip())
    assert parse_vkey(printed) == key.verifier()
    assert key.name == "example.com/log"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "log.key"
    out.write_text("precious\n")
    assert main(["keygen", "--name", "example.com/log", "--out", str(out)]) == EXIT_USAGE
    assert out.read_text() == "precious\n"
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["has space", "a+b", ""])
def test_keygen_rejects_bad_names(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k.key"
    assert main(["keygen", "--name", name, "--out", str(out)]) == EXIT_USAGE
    assert not out.exists()
    assert "--name" in capsys.readouterr().err


def test_verify_checkpoint_accepts_the_real_sum_golang_org_checkpoint(
    sum_golang: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    note, key = sum_golang
    assert main(["verify", "checkpoint", "--key", str(key), "--json", str(note)]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["origin"] == "go.sum database tree"
    assert report["tree_size"] == 65664258


def test_verify_checkpoint_takes_the_key_string_itself(
    sum_golang: tuple[Path, Path],
) -> None:
    note, key = sum_golang
    vkey = key.read_text().strip()
    assert main(["verify", "checkpoint", "--key", vkey, str(note)]) == EXIT_OK


def test_verify_checkpoint_rejects_every_one_byte_change(
    sum_golang: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note, key = sum_golang
    original = note.read_bytes()
    tampered = tmp_path / "tampered"
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x01
        tampered.write_bytes(bytes(data))
        status = main(["verify", "checkpoint", "--key", str(key), str(tampered)])
        err = capsys.readouterr().err
        assert status == EXIT_FAILED, f"byte {i} changed and the checkpoint still verified"
        assert "FAILED" in err


def test_verify_checkpoint_names_the_failure(
    sum_golang: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note, key = sum_golang
    tampered = tmp_path / "tampered"
    tampered.write_bytes(note.read_bytes().replace(b"65664258", b"65664259"))
    assert main(["verify", "checkpoint", "--key", str(key), "--json", str(tampered)]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False
    assert report["checks"][0]["status"] == "failed"
    assert "sum.golang.org+033de0ae" in report["checks"][0]["detail"]
    assert "signature does not verify" in captured.err


def test_verify_checkpoint_with_the_wrong_key_fails(
    sum_golang: tuple[Path, Path], vectors: dict[str, Any]
) -> None:
    note, _ = sum_golang
    other = vectors["signed_note"]["PeterNeumann"]["vkey"]
    assert main(["verify", "checkpoint", "--key", other, str(note)]) == EXIT_FAILED


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "checkpoint", "--key", "not-a-key", "missing.checkpoint"],
        ["verify", "checkpoint", "--key", "bad+00000000+AAAA", "x"],
    ],
)
def test_verify_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "--key" in capsys.readouterr().err


def test_verify_checkpoint_unreadable_file_exits_2(
    sum_golang: tuple[Path, Path], tmp_path: Path
) -> None:
    _, key = sum_golang
    missing = tmp_path / "nope"
    assert main(["verify", "checkpoint", "--key", str(key), str(missing)]) == EXIT_USAGE


def test_demo_leaves_a_log_that_verifies(demo_dir: Path) -> None:
    assert (demo_dir / "log" / "checkpoint").read_bytes() == (demo_dir / "checkpoint").read_bytes()
    assert (demo_dir / "log" / "tile" / "0" / "000.p" / "6").stat().st_size == 6 * 32
    assert (demo_dir / "log" / "tile" / "entries" / "000.p" / "6").is_file()
    bundles = sorted((demo_dir / "bundles").glob("*.tlog-proof"))
    assert len(bundles) == 5
    assert stat.S_IMODE((demo_dir / "log.key").stat().st_mode) == 0o600


def test_verify_bundle_checks_everything_with_the_edge_key(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundles = sorted(str(p) for p in (demo_dir / "bundles").glob("*.tlog-proof"))
    argv = ["verify", "bundle", "--key", str(demo_dir / "log.vkey")]
    argv += ["--edge-key", str(demo_dir / "edge.vkey"), "--json", *bundles]
    assert main(argv) == EXIT_OK
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(reports) == len(bundles)
    for report in reports:
        statuses = {c["name"]: c["status"] for c in report["checks"]}
        assert statuses["checkpoint signature"] == "ok"
        assert statuses["inclusion"] == "ok"
        assert statuses["receipt signature"] == "ok"
        assert report["entry"] == "receipt"


def test_verify_bundle_says_what_it_did_not_check(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = next((demo_dir / "bundles").glob("*.tlog-proof"))
    assert main(["verify", "bundle", "--key", str(demo_dir / "log.vkey"), str(bundle)]) == 0
    err = capsys.readouterr().err
    assert "OK (2 not checked)" in err
    assert "receipt signature: no key given" in err


def test_verify_bundle_fails_on_a_tampered_entry(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = next((demo_dir / "bundles").glob("*.tlog-proof"))
    text = bundle.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[1].startswith("extra ")
    # Swap the entry for another bundle's entry: the inclusion check must catch it.
    other = sorted((demo_dir / "bundles").glob("*.tlog-proof"))[-1].read_text().split("\n")[1]
    assert other != lines[1]
    tampered = tmp_path / "tampered.tlog-proof"
    tampered.write_text("\n".join([lines[0], other, *lines[2:]]), encoding="utf-8")
    argv = ["verify", "bundle", "--key", str(demo_dir / "log.vkey"), "--json", str(tampered)]
    assert main(argv) == EXIT_FAILED
    report = json.loads(capsys.readouterr().out)
    failed = [c for c in report["checks"] if c["status"] == "failed"]
    assert [c["name"] for c in failed] == ["inclusion"]


def test_verify_bundle_any_failure_fails_the_run(demo_dir: Path, tmp_path: Path) -> None:
    good = next((demo_dir / "bundles").glob("*.tlog-proof"))
    bad = tmp_path / "bad.tlog-proof"
    bad.write_bytes(good.read_bytes().replace(b"index ", b"index 9", 1))
    argv = ["verify", "bundle", "--key", str(demo_dir / "log.vkey"), str(good), str(bad)]
    assert main(argv) == EXIT_FAILED


def test_verify_bundle_with_an_unmet_witness_quorum_fails(
    demo_dir: Path, vectors: dict[str, Any]
) -> None:
    witness = vectors["cosignature_v1"]["published"]["cosigner_vkey_type_0x04"]
    bundle = next((demo_dir / "bundles").glob("*.tlog-proof"))
    argv = ["verify", "bundle", "--key", str(demo_dir / "log.vkey"), "--witness", witness]
    assert main([*argv, str(bundle)]) == EXIT_FAILED


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path)]) == EXIT_USAGE
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_replaces_its_own_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--receipts", "2"]) == EXIT_OK
    first = (out / "log.vkey").read_text()
    assert main(["demo", "--out", str(out), "--receipts", "3"]) == EXIT_OK
    assert (out / "log.vkey").read_text() != first
    assert len(list((out / "bundles").iterdir())) == 3
    shutil.rmtree(out)
