"""The entry reader: ``VerifiedTree.entries(..., in_child=True)`` against a real ``meterlog
serve`` (the healthy log of 601 entries: two full bundles and a partial one).

It yields what ``entries`` yields in this process, for any range; a lie (through the
:class:`TamperProxy`) is raised here with its type and message after the entries before it;
so is an outage, an unexpected error and the reader's death, none of them as a hang. The
reader is stopped and reaped when the caller stops early (the generator closed, or an
exception in the loop), and exits alone when the caller is killed with SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import closing
from pathlib import Path
from typing import TypeVar

import pytest

from tests.test_worker_pools import _alive
from tests.verifier.conftest import HEALTHY_SIZE, ServedLog
from tests.verifier.logs import LOG_KEY, TamperProxy, free_port
from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.errors import ProofError
from tlog.note import format_vkey
from verifier import client as client_module
from verifier.client import (
    READER_NAME,
    EntryReaderError,
    LogClient,
    LogUnavailableError,
    VerifiedTree,
)

T = TypeVar("T")


def _signed(url: str) -> SignedCheckpoint:
    with LogClient(url) as client:
        return open_checkpoint(client.fetch_checkpoint(), [LOG_KEY.verifier()])


def _readers() -> list[int]:
    """The pids of this process's running entry readers."""
    return [p.pid for p in multiprocessing.active_children() if p.name == READER_NAME and p.pid]


def _exists(pid: int) -> bool:
    """Whether ``pid`` is a process, running or a zombie (a child not yet reaped)."""
    return Path(f"/proc/{pid}").exists()


def _within(seconds: float, work: Callable[[], T]) -> T:
    """``work()``'s result or error, or a failure if it takes longer than ``seconds``."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(work).result(timeout=seconds)
    except FutureTimeoutError:
        pytest.fail(f"still running after {seconds} s")
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def small_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 entries a message: the reader sends many, and is still sending when a test acts."""
    monkeypatch.setattr(client_module, "_ENTRIES_PER_MESSAGE", 16)


RANGES = [
    (0, HEALTHY_SIZE),  # everything: two full bundles and the partial last one
    (0, 512),  # full bundles only
    (256, 512),  # one full bundle, not the first
    (100, HEALTHY_SIZE),  # from mid-bundle to the end of the partial bundle
    (300, 301),
    (600, HEALTHY_SIZE),  # the last entry alone
    (500, 520),  # across a bundle boundary
]


@pytest.mark.parametrize(("start", "end"), RANGES)
@pytest.mark.parametrize("per_message", [4096, 100])
def test_the_reader_yields_what_entries_yields(
    healthy_log: ServedLog,
    monkeypatch: pytest.MonkeyPatch,
    start: int,
    end: int,
    per_message: int,
) -> None:
    monkeypatch.setattr(client_module, "_ENTRIES_PER_MESSAGE", per_message)
    signed = _signed(healthy_log.url)
    with LogClient(healthy_log.url) as client:
        tree = VerifiedTree(client, signed)
        here = list(tree.entries(start, end))
        fetched_here = client.fetched
    with LogClient(healthy_log.url) as client:
        tree = VerifiedTree(client, signed)
        got: list[tuple[int, bytes]] = []
        for item in tree.entries(start, end, in_child=True):
            if not got:
                assert len(_readers()) == 1  # read in a child, not here
            got.append(item)
        assert client.fetched == fetched_here  # the child's fetches are counted here
    assert got == here
    assert [index for index, _ in got] == list(range(start, end))
    assert not _readers()


@pytest.mark.parametrize(("start", "end"), [(0, 0), (HEALTHY_SIZE, HEALTHY_SIZE), (7, 7)])
def test_an_empty_range_starts_no_reader(healthy_log: ServedLog, start: int, end: int) -> None:
    with LogClient(healthy_log.url) as client:
        assert list(VerifiedTree(client, _signed(healthy_log.url)).entries(start, end)) == []
        assert list(VerifiedTree(client, _signed(healthy_log.url)).entries(
            start, end, in_child=True
        )) == []  # fmt: skip
        assert client.fetched == 0


def _second_bundle_changed(path: str, status: int, body: bytes) -> tuple[int, bytes]:
    if path == "/tile/entries/001":
        changed = body.replace(b'"cache":"hit"', b'"cache":"hiT"', 1)
        assert changed != body
        return status, changed
    return status, body


def _read_until_error(tree: VerifiedTree, *, in_child: bool) -> tuple[list[bytes], Exception]:
    got: list[bytes] = []
    try:
        for index, entry in tree.entries(0, HEALTHY_SIZE, in_child=in_child):
            assert index == len(got)
            got.append(entry)
    except Exception as error:  # noqa: BLE001 -- the test compares them
        return got, error
    pytest.fail("no error")


@pytest.mark.parametrize("per_message", [4096, 100])
def test_a_tampered_bundle_is_a_proof_error_here_after_the_entries_before_it(
    healthy_log: ServedLog, monkeypatch: pytest.MonkeyPatch, per_message: int
) -> None:
    monkeypatch.setattr(client_module, "_ENTRIES_PER_MESSAGE", per_message)
    signed = _signed(healthy_log.url)
    with TamperProxy(healthy_log.url, _second_bundle_changed) as proxy:
        with LogClient(proxy.url) as client:
            before, expected = _read_until_error(VerifiedTree(client, signed), in_child=False)
        with LogClient(proxy.url) as client:
            got, error = _read_until_error(VerifiedTree(client, signed), in_child=True)
    assert isinstance(expected, ProofError)
    assert type(error) is ProofError
    assert "tile/entries/001" in str(error)
    assert str(error) == str(expected)
    assert (error.expected, error.calculated) == (expected.expected, expected.calculated)
    assert error.expected is not None
    assert len(got) == 256
    assert got == before
    assert "Traceback" in str(error.__cause__)  # the child's, for whoever debugs it
    assert not _readers()


@pytest.mark.usefixtures("small_messages")
def test_closing_the_iterator_stops_the_reader(healthy_log: ServedLog) -> None:
    threads = set(threading.enumerate())
    with LogClient(healthy_log.url) as client:
        reading = VerifiedTree(client, _signed(healthy_log.url)).entries(
            0, HEALTHY_SIZE, in_child=True
        )
        assert next(reading)[0] == 0
        (pid,) = _readers()
        assert _alive(pid)
        reading.close()
        assert not _exists(pid)  # stopped and reaped: not even a zombie
        assert not _readers()
    assert set(threading.enumerate()) == threads  # no queue feeder or other thread left


@pytest.mark.usefixtures("small_messages")
def test_an_error_in_the_loop_stops_the_reader(healthy_log: ServedLog) -> None:
    seen: list[int] = []

    def bill(tree: VerifiedTree) -> None:
        for index, _ in tree.entries(0, HEALTHY_SIZE, in_child=True):
            seen.extend(_readers())
            raise ValueError(f"the engine failed at {index}")

    with LogClient(healthy_log.url) as client:
        tree = VerifiedTree(client, _signed(healthy_log.url))
        with pytest.raises(ValueError, match="failed at 0"):
            bill(tree)
        (pid,) = seen
        assert not _exists(pid)
        # ... and, as billing does, with the iterator closed explicitly while something still
        # holds it (here ``reading``, in billing the engine's frame in the traceback).
        with pytest.raises(ValueError, match="failed at 0"):  # noqa: SIM117
            with closing(tree.entries(0, HEALTHY_SIZE, in_child=True)) as reading:
                for index, _ in reading:
                    seen.extend(_readers())
                    raise ValueError(f"the engine failed at {index}")
        assert not _exists(seen[1])
    assert not _readers()


def test_an_unreachable_log_is_an_outage_here(healthy_log: ServedLog) -> None:
    signed = _signed(healthy_log.url)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def read(*, in_child: bool) -> Exception:
        with LogClient(url, timeout_s=5) as client:
            with pytest.raises(LogUnavailableError) as caught:
                list(VerifiedTree(client, signed).entries(0, HEALTHY_SIZE, in_child=in_child))
            return caught.value

    expected = read(in_child=False)
    error = _within(60, lambda: read(in_child=True))
    assert type(error) is LogUnavailableError
    assert str(error) == str(expected)
    assert "ConnectError" in str(error)
    assert not _readers()


def test_an_unexpected_error_in_the_reader_is_raised_here(
    healthy_log: ServedLog, tmp_path: Path
) -> None:
    """The tile cache is a file, not a directory: an OSError when the reader first caches."""
    signed = _signed(healthy_log.url)
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file")

    def read(*, in_child: bool) -> Exception:
        with LogClient(healthy_log.url, cache_dir=not_a_dir) as client:
            with pytest.raises(OSError) as caught:
                list(VerifiedTree(client, signed).entries(0, HEALTHY_SIZE, in_child=in_child))
            return caught.value

    expected = read(in_child=False)
    error = _within(60, lambda: read(in_child=True))
    assert type(error) is type(expected)
    assert str(error) == str(expected)
    assert not _readers()


@pytest.mark.usefixtures("small_messages")
def test_a_reader_that_dies_is_an_error_here(healthy_log: ServedLog) -> None:
    def read() -> tuple[int, EntryReaderError]:
        count = 0
        with LogClient(healthy_log.url) as client:
            reading = VerifiedTree(client, _signed(healthy_log.url)).entries(
                0, HEALTHY_SIZE, in_child=True
            )
            with pytest.raises(EntryReaderError) as caught:
                for _ in reading:
                    if count == 0:
                        (pid,) = _readers()
                        subprocess.run(["kill", "-KILL", str(pid)], check=True)
                    count += 1
        return count, caught.value

    count, error = _within(60, read)
    assert 0 < count < HEALTHY_SIZE
    assert f"at index {count} of [0, {HEALTHY_SIZE})" in str(error)
    assert "exited with code -9" in str(error)
    assert not _readers()


STAND_IN = """
import sys, threading, time, multiprocessing
from tlog.checkpoint import open_checkpoint
from tlog.note import parse_vkey
from verifier.client import READER_NAME, LogClient, VerifiedTree

note, vkey, url = open(sys.argv[1], "rb").read(), sys.argv[2], sys.argv[3]
signed = open_checkpoint(note, [parse_vkey(vkey)])
client = LogClient(url, timeout_s=300)
reading = VerifiedTree(client, signed).entries(0, signed.checkpoint.tree_size, in_child=True)
threading.Thread(target=lambda: next(reading), daemon=True).start()
while not (found := [p for p in multiprocessing.active_children() if p.name == READER_NAME]):
    time.sleep(0.05)
print(found[0].pid, flush=True)
time.sleep(300)
"""


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback port that takes connections and never answers: a log that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_the_reader_exits_when_its_parent_is_killed(
    healthy_log: ServedLog, silent_server: str, tmp_path: Path
) -> None:
    """The reader waits on a log that never answers (for up to 300 s); its parent is killed
    with SIGKILL. Nothing it waits on involves the parent: it must notice alone."""
    note = tmp_path / "checkpoint"
    note.write_bytes(_signed(healthy_log.url).signed_note)
    parent = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(note), format_vkey(LOG_KEY.verifier()),
         silent_server],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    with parent.stdout:
        try:
            reader = int(parent.stdout.readline())
            assert _alive(reader)
        finally:
            parent.kill()
            parent.wait()
    deadline = time.monotonic() + 15
    while _alive(reader):
        assert time.monotonic() < deadline, f"the entry reader {reader} outlived its parent"
        time.sleep(0.1)
