"""The monitor against real servers: consistency at every step, the full audit, its state.

The audited log is built with entries the real sequencer would refuse (appended with
``append_unchecked``): receipts by a key never registered, by a revoked key, by a key not
yet valid, with a bad signature, and an edge_key statement not signed by the operator. The
monitor must name exactly those, judging each receipt by the registry as it stood at its
index, and persist what it has verified so the next run continues from there.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import verifier.monitor
from cli.main import main
from tests.log_server.server_process import METERLOG, ServerProcess
from tests.verifier.conftest import HEALTHY_SIZE, ServedLog
from tests.verifier.logs import (
    EDGE_KEY,
    EDGE_KEY_2,
    LOG_KEY,
    NOW_MS,
    OPERATOR_KEY,
    ROGUE_KEY,
    TamperProxy,
    append_unchecked,
    build_log,
    receipt,
    registration,
    serve_log,
)
from tlog.entry import Entry, sign_edge_key
from tlog.note import format_vkey
from verifier.client import LogClient
from verifier.monitor import Monitor, Progress
from verifier.offline import TrustPolicy

LATER = NOW_MS + 5_000


def _misbehaving_entries() -> list[Entry]:
    bad_signature = dataclasses.replace(receipt(10), bytes_sent=1)
    rogue_statement = sign_edge_key(registration(ROGUE_KEY), ROGUE_KEY)
    return [
        registration(),  # 0
        receipt(1),  # 1 fine
        receipt(2, ROGUE_KEY),  # 2 unknown key
        receipt(3, served_at_ms=LATER),  # 3 fine: the revocation below is not logged yet
        registration(action="revoke", valid_until_ms=NOW_MS),  # 4
        receipt(5, served_at_ms=LATER),  # 5 revoked key
        receipt(6, served_at_ms=NOW_MS - 1),  # 6 fine: served before the revocation
        registration(EDGE_KEY_2, "rotate", valid_from_ms=NOW_MS + 10_000, replaces=EDGE_KEY),
        receipt(8, EDGE_KEY_2, served_at_ms=NOW_MS + 20_000),  # 8 fine
        receipt(9, EDGE_KEY_2, served_at_ms=LATER),  # 9 not yet valid
        bad_signature,  # 10 bad signature
        rogue_statement,  # 11 not the operator's (applied only without --operator-key)
        receipt(12, ROGUE_KEY),  # 12 unknown key with --operator-key, fine without
    ]


EXPECTED = {
    2: "unknown key",
    5: "revoked key",
    9: "key not yet valid",
    10: "bad signature",
    11: "unknown operator key",
    12: "unknown key",
}


@pytest.fixture(scope="module")
def misbehaving_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("misbehaving") / "data"
    storage = build_log(data_dir)
    append_unchecked(storage, _misbehaving_entries())
    storage.close()
    with serve_log(data_dir) as server:
        yield server


def _monitor(url: str, state: Path, *extra: str) -> tuple[int, list[dict[str, object]]]:
    argv = ["verify", "monitor", "--log", url, "--state", str(state), "--once", "--json"]
    argv += ["--key", format_vkey(LOG_KEY.verifier()), *extra]
    code = main(argv)
    return code, []


def test_the_full_audit_names_every_bad_entry(
    misbehaving_log: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = format_vkey(OPERATOR_KEY.verifier())
    state = tmp_path / "state"
    code, _ = _monitor(misbehaving_log.url, state, "--full", "--operator-key", operator)
    out = capsys.readouterr()
    assert code == 1
    found = [json.loads(line) for line in out.out.splitlines() if '"problem"' in line]
    assert {p["index"]: p["problem"] for p in found} == EXPECTED
    saved = [json.loads(line) for line in (state / "problems.jsonl").read_text().splitlines()]
    assert saved == found
    assert "PROBLEM at index 5: revoked key" in out.err
    assert json.loads((state / "state.json").read_text())["next_index"] == 13
    # Nothing new: nothing re-checked, nothing re-reported.
    code, _ = _monitor(misbehaving_log.url, state, "--full", "--operator-key", operator)
    assert code == 0
    assert len((state / "problems.jsonl").read_text().splitlines()) == len(EXPECTED)
    capsys.readouterr()


def test_without_the_operator_key_the_registry_is_the_logs(
    misbehaving_log: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _monitor(misbehaving_log.url, tmp_path / "state", "--full")
    assert code == 1
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    problems = {p["index"]: p["problem"] for p in found if "problem" in p}
    assert problems == {k: v for k, v in EXPECTED.items() if k not in (11, 12)}


def test_the_monitor_follows_a_growing_log_with_proofs_from_tiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = build_log(tmp_path / "data")
    append_unchecked(storage, [registration(), *(receipt(i) for i in range(300))])
    with serve_log(tmp_path / "data") as server, TamperProxy(server.url) as proxy:
        for full in (False, True):
            state = tmp_path / f"state-{full}"
            flags = ["--full"] if full else []
            assert _monitor(proxy.url, state, *flags)[0] == 0
        first = len(proxy.fetched)
        append_unchecked(storage, [receipt(i) for i in range(300, 700)])
        for full in (False, True):
            proxy.fetched.clear()
            assert (
                _monitor(proxy.url, tmp_path / f"state-{full}", *(["--full"] if full else []))[0]
                == 0
            )
            assert not [p for p in proxy.fetched if p.startswith("/v1/")]
            assert [p for p in proxy.fetched if p.startswith("/tile/")]
        err = capsys.readouterr().err
        assert err.count("consistent: 301 -> 701") == 2 and "400 entries checked" in err
        assert first > 0
        # A stale (older) checkpoint served again is consistent and is not trusted over 701.
        older = httpx.get(f"{server.url}/v1/checkpoints/301").content
        proxy.mutate = lambda path, status, body: (
            (200, older) if path == "/checkpoint" else (status, body)
        )
        assert _monitor(proxy.url, tmp_path / "state-True", "--full")[0] == 0
        assert "older, consistent checkpoint (301); kept 701" in capsys.readouterr().err
    storage.close()


def test_an_interrupted_audit_resumes_where_it_stopped(
    healthy_log: ServedLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verifier.monitor, "_SAVE_EVERY_S", 0.0)
    policy = TrustPolicy((LOG_KEY.verifier(),))

    class StopError(Exception):
        pass

    def stop(progress: Progress) -> None:
        raise StopError

    with LogClient(healthy_log.url) as client:
        monitor = Monitor(
            client, policy, tmp_path, full=True, on_progress=stop, progress_interval_s=0.0
        )
        with pytest.raises(StopError):
            monitor.step()
        saved = json.loads((tmp_path / "state.json").read_text())
        assert saved["next_index"] == 256
        reports: list[Progress] = []
        resumed = Monitor(client, policy, tmp_path, full=True, on_progress=reports.append)
        result = resumed.step()
    assert result.entries_checked == HEALTHY_SIZE - 256 and not result.problems
    assert reports[-1] == Progress(
        HEALTHY_SIZE - 256, HEALTHY_SIZE - 256, reports[-1].entries_per_s
    )
    assert json.loads((tmp_path / "state.json").read_text())["entries_checked"] == HEALTHY_SIZE


def test_a_state_without_full_cannot_become_full(healthy_log: ServedLog, tmp_path: Path) -> None:
    assert _monitor(healthy_log.url, tmp_path)[0] == 0
    assert _monitor(healthy_log.url, tmp_path, "--full")[0] == 2


def test_polling_mode_follows_the_log(tmp_path: Path) -> None:
    storage = build_log(tmp_path / "data")
    append_unchecked(storage, [registration(), *(receipt(i) for i in range(10))])
    state = tmp_path / "state"
    with serve_log(tmp_path / "data") as server:
        key = format_vkey(LOG_KEY.verifier())
        argv = [str(METERLOG), "verify", "monitor", "--log", server.url, "--state", str(state),
                "--full", "--interval", "0.05", "--key", key]  # fmt: skip
        with (tmp_path / "monitor.log").open("wb") as log:
            process = subprocess.Popen(argv, stderr=log, stdout=subprocess.DEVNULL)
        try:
            for size in (11, 61):
                if size == 61:
                    append_unchecked(storage, [receipt(i) for i in range(10, 60)])
                deadline = time.monotonic() + 20
                while not (_audited(state, size) and _said(tmp_path / "monitor.log", size)):
                    assert process.poll() is None, (tmp_path / "monitor.log").read_text()
                    assert time.monotonic() < deadline, f"not audited up to {size}"
                    time.sleep(0.05)
        finally:
            # SIGTERM, not SIGINT: a shell's background job (as `make test &`) starts its
            # children with SIGINT ignored, and Python keeps it so.
            process.terminate()
            process.wait(timeout=10)
    storage.close()
    assert "consistent: 11 -> 61; 50 entries checked" in (tmp_path / "monitor.log").read_text()


def _said(log: Path, size: int) -> bool:
    """The monitor reported the step to ``size`` (it prints after saving its state)."""
    text = log.read_text(encoding="utf-8", errors="replace")
    return f"size {size} (trusted" in text or f"-> {size};" in text


def _audited(state: Path, size: int) -> bool:
    try:
        return json.loads((state / "state.json").read_text())["next_index"] == size
    except (OSError, ValueError):
        return False
