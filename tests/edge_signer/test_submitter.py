"""The submitter against a real log (``meterlog serve`` on loopback), with faults injected in
its HTTP transport: a log that is down, slow (the answer is lost after the log acted on the
request), overloaded (503/429 with Retry-After), or that answers with forged proofs, and a
log that forks. A forged answer must be caught, stop the submitter and store nothing; every
receipt must end up in the log exactly once.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_signer.signer import Delivery, EdgeSigner, SignedReceipt
from edge_signer.spool import Spool
from edge_signer.submitter import (
    Backoff,
    LogForkError,
    LogMisbehaviourError,
    LogRefusedError,
    LogUnavailableError,
    SpoolBusyError,
    Submitter,
    SubmitterStats,
    _retry_after_s,
    submitter_lock,
)
from tests.log_server.server_process import (
    ServerProcess,
    fetch_json,
    register_edge,
    running_server,
    start_server,
)
from tlog.bundle import parse_bundle, verify_bundle
from tlog.checkpoint import open_checkpoint
from tlog.entry import Receipt, decode_entry, encode_entry
from tlog.evidence import parse_fork_evidence, verify_fork_evidence
from tlog.note import SigningKey

EDGE = SigningKey("edge-submitter-test", bytes([21]) * 32)
UNREGISTERED = SigningKey("edge-unregistered", bytes([22]) * 32)
_numbers = itertools.count()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fresh(count: int, key: SigningKey = EDGE, *, bytes_sent: int = 1000) -> list[SignedReceipt]:
    """``count`` receipts served now, with request ids no other test uses."""
    signer = EdgeSigner(key)
    receipts = []
    for _ in range(count):
        n = next(_numbers)
        delivery = Delivery(
            request_id=f"sub-{n}-{time.time_ns()}",
            consumer_id="acme-ai",
            token_id="tok-1",
            job_id="job-1",
            scope="training",
            content_id=f"sha256:{n:064x}",
            creator_id="acct:alice",
            manifest="sha256:" + "ab" * 32,
            bytes_sent=bytes_sent,
            cache="miss",
        )
        receipts.append(signer.sign(delivery, served_at_ms=now_ms()))
    return receipts


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("log") / "data") as server:
        register_edge(server, EDGE)
        yield server


# -- fault injection -----------------------------------------------------------------------------

Fault = Callable[[httpx.Request, httpx.HTTPTransport], httpx.Response]


class Faults(httpx.BaseTransport):
    """A real HTTP transport, with a queue of faults applied to the next requests."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()
        self.plan: deque[Fault | None] = deque()
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts += 1
            if self.plan:
                fault = self.plan.popleft()
                if fault is not None:
                    return fault(request, self.real)
        return self.real.handle_request(request)

    def close(self) -> None:
        self.real.close()


def refused(request: httpx.Request, real: httpx.HTTPTransport) -> httpx.Response:
    raise httpx.ConnectError("injected: connection refused", request=request)


def answer_lost(request: httpx.Request, real: httpx.HTTPTransport) -> httpx.Response:
    """The log gets the batch and logs it, but the answer never arrives in time."""
    response = real.handle_request(request)
    response.read()
    raise httpx.ReadTimeout("injected: the answer took too long", request=request)


def status(code: int, retry_after: str | None = None) -> Fault:
    def fault(request: httpx.Request, real: httpx.HTTPTransport) -> httpx.Response:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        body = {"error": {"field": "log", "reason": "injected"}}
        return httpx.Response(code, headers=headers, json=body, request=request)

    return fault


def tamper(change: Callable[[dict[str, Any]], None]) -> Fault:
    """Forward to the log, then rewrite its (JSON) answer."""

    def fault(request: httpx.Request, real: httpx.HTTPTransport) -> httpx.Response:
        response = real.handle_request(request)
        answer = json.loads(response.read())
        change(answer)
        return httpx.Response(response.status_code, json=answer, request=request)

    return fault


@pytest.fixture
def faults() -> Iterator[Faults]:
    transport = Faults()
    yield transport
    transport.close()


_clients: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def submitter(
    spool: Spool, server: ServerProcess, faults: Faults | None = None, url: str | None = None,
    **options: Any,
) -> Submitter:  # fmt: skip
    """A submitter whose HTTP client (through ``faults``, if given) is closed after the test."""
    client = httpx.Client(transport=faults or httpx.HTTPTransport(), timeout=10.0)
    _clients.append(client)
    return Submitter(spool, url or server.url, server.log_key, client=client, **options)


class Sleeps:
    """A ``sleep`` for drain(): records each wait instead of waiting."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.waits: list[float] = []
        self.stop_after = stop_after

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def logged_once(server: ServerProcess, receipts: list[SignedReceipt]) -> None:
    """Each receipt is in the log, as sent plus logged_at_ms, and the log holds no other
    receipt of this edge with its request id (the log's own dedup, read back from outside)."""
    with httpx.Client(timeout=10.0) as client:
        size = open_checkpoint(client.get(f"{server.url}/checkpoint").content, [server.log_key])
        entries = fetch_json(
            client, f"{server.url}/v1/entries?start=0&end={size.checkpoint.tree_size}"
        )
    counts: dict[str, int] = {}
    for item in entries["entries"]:  # type: ignore[union-attr]
        entry = decode_entry(item["entry"].encode())
        if isinstance(entry, Receipt):
            counts[entry.request_id] = counts.get(entry.request_id, 0) + 1
    for signed in receipts:
        assert counts.get(signed.request_id) == 1, signed.request_id


def assert_all_verified(spool: Spool, server: ServerProcess, receipts: list[SignedReceipt]) -> None:
    for signed in receipts:
        row = spool.receipt(signed.edge, signed.request_id)
        assert row is not None and row.state == "verified", row
        assert row.bundle is not None
        verified = verify_bundle(parse_bundle(row.bundle), [server.log_key])
        assert verified.index == row.log_index
        logged = decode_entry(verified.entry)
        assert isinstance(logged, Receipt)
        assert logged.logged_at_ms is not None
        assert (
            encode_entry(logged).replace(f',"logged_at_ms":{logged.logged_at_ms}'.encode(), b"")
            == signed.entry
        )


# -- the happy path ------------------------------------------------------------------------------


def test_drains_in_batches_and_keeps_verified_bundles(log: ServerProcess, tmp_path: Path) -> None:
    receipts = fresh(10)
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log, batch_size=4)
        sleeps = Sleeps()
        sub.drain(sleeps)
        assert sleeps.waits == []
        assert sub.stats.batches == 3 and sub.stats.logged == 10
        assert_all_verified(spool, log, receipts)
        status = spool.status()
        assert (status.pending, status.verified, status.submitted) == (0, 10, 10)
        assert status.oldest_pending_spooled_at_ms is None
        assert spool.get_meta("checkpoint") is not None
    logged_once(log, receipts)


def test_run_drains_by_size_and_age_until_stopped(log: ServerProcess, tmp_path: Path) -> None:
    receipts = fresh(5)
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
    stop = threading.Event()
    stats: list[SubmitterStats] = []

    def drain() -> None:  # a spool connection belongs to the thread that opened it
        with Spool(tmp_path) as spool:
            sub = submitter(spool, log, batch_size=100, batch_wait_s=0.05)
            stats.append(sub.stats)
            sub.run(stop, poll_s=0.01)

    thread = threading.Thread(target=drain)
    thread.start()
    deadline = time.monotonic() + 20
    while not (stats and stats[0].logged == 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert stats[0].batches == 1  # five receipts, one batch once the oldest had waited
    with Spool(tmp_path) as spool:
        assert_all_verified(spool, log, receipts)


# -- a log that is down, slow, overloaded --------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_log_that_is_down_is_retried_with_backoff_then_drained(
    log: ServerProcess, tmp_path: Path
) -> None:
    receipts = fresh(3)
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        down = submitter(spool, log, url=f"http://127.0.0.1:{closed_port()}",
                         backoff=Backoff(initial_s=0.5, factor=2, maximum_s=3))  # fmt: skip
        sleeps = Sleeps()
        with pytest.raises(LogUnavailableError):
            down.drain(sleeps, give_up_after=6)
        waits = sleeps.waits
        assert len(waits) == 5
        for wait, ceiling in zip(waits, [0.5, 1, 2, 3, 3], strict=True):
            assert ceiling / 2 <= wait <= ceiling
        assert len(set(waits)) == len(waits)  # jitter
        status = spool.status()
        assert (status.pending, status.verified, status.submitted) == (3, 0, 3)
        assert all(p.attempts == 6 for p in spool.pending(10))
        submitter(spool, log).drain(Sleeps())
        assert_all_verified(spool, log, receipts)
    logged_once(log, receipts)


def test_a_slow_log_whose_answer_is_lost_logs_each_receipt_once(
    log: ServerProcess, tmp_path: Path, faults: Faults
) -> None:
    receipts = fresh(4)
    faults.plan.extend([answer_lost, answer_lost])
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log, faults)
        sleeps = Sleeps()
        sub.drain(sleeps)
        assert len(sleeps.waits) == 2 and faults.posts == 3
        assert sub.stats.duplicate == 4 and sub.stats.logged == 0  # the log had them already
        assert_all_verified(spool, log, receipts)
    logged_once(log, receipts)


def test_a_timeout_before_the_log_acted_is_retried(
    log: ServerProcess, tmp_path: Path, faults: Faults
) -> None:
    def too_slow(request: httpx.Request, real: httpx.HTTPTransport) -> httpx.Response:
        raise httpx.ConnectTimeout("injected: connect timed out", request=request)

    receipts = fresh(2)
    faults.plan.append(too_slow)
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log, faults)
        sub.drain(Sleeps())
        assert sub.stats.logged == 2 and sub.stats.retries == 1
    logged_once(log, receipts)


def test_503_and_429_are_retried_honouring_retry_after(
    log: ServerProcess, tmp_path: Path, faults: Faults
) -> None:
    receipts = fresh(2)
    in_20_s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 20))
    faults.plan.extend([status(503, "7"), status(429, in_20_s), status(503), status(500)])
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log, faults, backoff=Backoff(initial_s=0.1, maximum_s=0.4))
        sleeps = Sleeps()
        sub.drain(sleeps)
        assert sleeps.waits[0] >= 7
        assert 18 <= sleeps.waits[1] <= 21
        assert sleeps.waits[2] <= 0.4 and sleeps.waits[3] <= 0.4
        assert_all_verified(spool, log, receipts)
    logged_once(log, receipts)


def test_a_batch_too_large_is_halved(log: ServerProcess, tmp_path: Path, faults: Faults) -> None:
    receipts = fresh(8)
    faults.plan.extend([status(413), status(413)])
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log, faults, batch_size=8)
        sleeps = Sleeps()
        sub.drain(sleeps)
        assert sub.batch_size == 2
        assert sleeps.waits == []  # a smaller batch goes at once
        assert sub.stats.batches == 4 and faults.posts == 6
        assert_all_verified(spool, log, receipts)


def test_a_wrong_url_stops_the_submitter(log: ServerProcess, tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(fresh(1), now_ms())
        with pytest.raises(LogRefusedError, match="404"):
            submitter(spool, log, url=f"{log.url}/not-the-log").drain(Sleeps())
        assert spool.status().pending == 1


# -- forged answers ------------------------------------------------------------------------------


def flip_proof_hash(answer: dict[str, Any]) -> None:
    lines = answer["results"][0]["bundle"].split("\n")
    index_line = next(i for i, line in enumerate(lines) if line.startswith("index "))
    raw = bytearray(base64.b64decode(lines[index_line + 1]))
    raw[0] ^= 1
    lines[index_line + 1] = base64.b64encode(bytes(raw)).decode()
    answer["results"][0]["bundle"] = "\n".join(lines)


def resign_checkpoint(answer: dict[str, Any]) -> None:
    """The checkpoint re-signed by an impostor key of the log's name."""
    from tlog.note import sign_note  # noqa: PLC0415

    bundle = answer["results"][0]["bundle"]
    head, _, note = bundle.partition("\n\n")
    text = note.split("\n\n")[0] + "\n"
    impostor = SigningKey(text.split("\n")[0], bytes([99]) * 32)
    answer["results"][0]["bundle"] = head + "\n\n" + sign_note(text, [impostor.signer()]).decode()


def swap_bundles(answer: dict[str, Any]) -> None:
    first, second = answer["results"][0], answer["results"][1]
    first["bundle"], second["bundle"] = second["bundle"], first["bundle"]
    first["index"], second["index"] = second["index"], first["index"]


def shift_index(answer: dict[str, Any]) -> None:
    answer["results"][0]["index"] += 1


def drop_a_result(answer: dict[str, Any]) -> None:
    answer["results"].pop()


def unknown_status(answer: dict[str, Any]) -> None:
    answer["results"][1]["status"] = "accepted"


def strip_bundle(answer: dict[str, Any]) -> None:
    del answer["results"][0]["bundle"]


def claim_rejected_is_logged(answer: dict[str, Any]) -> None:
    answer["results"][0] = {
        "status": "logged",
        "index": 0,
        "bundle": answer["results"][0]["bundle"],
    }


FORGERIES = {
    "a proof hash flipped": flip_proof_hash,
    "checkpoint signed by an impostor": resign_checkpoint,
    "another receipt's bundle": swap_bundles,
    "the answer's index is not the bundle's": shift_index,
    "one result missing": drop_a_result,
    "an unknown status": unknown_status,
    "no bundle": strip_bundle,
    "a bundle for index 0": claim_rejected_is_logged,
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_answer_stops_the_submitter_and_stores_nothing(
    log: ServerProcess, tmp_path: Path, faults: Faults, forge: Callable[[dict[str, Any]], None]
) -> None:
    receipts = fresh(3)
    faults.plan.append(tamper(forge))
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log, faults)
        with pytest.raises(LogMisbehaviourError, match="the log misbehaved"):
            sub.drain(Sleeps())
        status = spool.status()
        assert (status.pending, status.verified) == (3, 0)
        assert all(row.bundle is None for row in spool.receipts())
        # The log did log them; an honest answer later is verified, and nothing is doubled.
        submitter(spool, log).drain(Sleeps())
        assert_all_verified(spool, log, receipts)
    logged_once(log, receipts)


def test_run_stops_loudly_on_a_forged_answer(
    log: ServerProcess, tmp_path: Path, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    faults.plan.append(tamper(flip_proof_hash))
    with Spool(tmp_path) as spool:
        spool.append(fresh(2), now_ms())
        sub = submitter(spool, log, faults, batch_wait_s=0.0)
        with pytest.raises(LogMisbehaviourError):
            sub.run(threading.Event(), poll_s=0.01)
        assert any(r.levelname == "CRITICAL" and "STOPPED" in r.message for r in caplog.records)
        assert spool.status().verified == 0


def test_a_forked_log_is_caught(log: ServerProcess, tmp_path: Path) -> None:
    """A second server with the log's own key but another history: its bundles verify
    against the key, but its checkpoints are not consistent with the ones seen before."""
    forked_dir = tmp_path / "forked"
    forked_dir.mkdir()
    shutil.copy(log.data_dir / "log.key", forked_dir / "log.key")
    forked = start_server(forked_dir)
    try:
        register_edge(forked, EDGE)
        with Spool(tmp_path / "spool") as spool:
            spool.append(fresh(2), now_ms())
            submitter(spool, log).drain(Sleeps())
            honest_size = open_checkpoint(spool.get_meta("checkpoint") or b"", [log.log_key])
            while honest_size.checkpoint.tree_size & (honest_size.checkpoint.tree_size - 1) == 0:
                # A proof from a power of two leaves the old root out: it could show no
                # fork, only fail. One more receipt, so that the proof shows the fork.
                spool.append(fresh(1), now_ms())
                submitter(spool, log).drain(Sleeps())
                honest_size = open_checkpoint(spool.get_meta("checkpoint") or b"", [log.log_key])
            # Make the fork larger than what the spool saw, so it must prove consistency.
            filler = fresh(honest_size.checkpoint.tree_size + 2)
            with Spool(tmp_path / "filler") as other:
                other.append(filler, now_ms())
                submitter(other, forked).drain(Sleeps())
            spool.append(fresh(1), now_ms())
            with pytest.raises(LogForkError) as exc:
                submitter(spool, forked, url=forked.url).drain(Sleeps())
            assert exc.value.old_checkpoint == spool.get_meta("checkpoint")
            assert spool.status().pending == 1
            # The evidence it carries is what meterlog verify evidence accepts.
            fork = verify_fork_evidence(parse_fork_evidence(exc.value.evidence), [log.log_key])
            assert fork.tree_size == honest_size.checkpoint.tree_size
            assert fork.root_hash == honest_size.checkpoint.root_hash != fork.other_root
    finally:
        forked.stop()


# -- refusals ------------------------------------------------------------------------------------


def test_rejected_receipts_are_kept_and_can_be_requeued(log: ServerProcess, tmp_path: Path) -> None:
    receipts = fresh(2, UNREGISTERED)
    with Spool(tmp_path) as spool:
        spool.append(receipts, now_ms())
        sub = submitter(spool, log)
        sub.drain(Sleeps())
        assert sub.stats.rejected == 2
        rows = spool.receipts()
        assert {r.state for r in rows} == {"rejected"}
        assert all(r.error is not None and r.error.startswith("receipt.key_id") for r in rows)
        register_edge(log, UNREGISTERED)
        assert spool.requeue("rejected") == 2
        submitter(spool, log).drain(Sleeps())
        assert_all_verified(spool, log, receipts)


def test_a_conflicting_request_id_is_recorded_as_such(log: ServerProcess, tmp_path: Path) -> None:
    (original,) = fresh(1)
    with Spool(tmp_path / "first") as first:
        first.append([original], now_ms())
        submitter(first, log).drain(Sleeps())
    other = EdgeSigner(EDGE).sign(
        Delivery(original.request_id, "acme-ai", "tok-2", "training", "sha256:" + "cd" * 32,
                 "acct:bob", "sha256:" + "ab" * 32, 5, "hit"),
        served_at_ms=now_ms(),
    )  # fmt: skip
    with Spool(tmp_path / "second") as second:
        second.append([other], now_ms())
        sub = submitter(second, log)
        sub.drain(Sleeps())
        (row,) = second.receipts()
        assert row.state == "conflict" and row.log_index is not None
        assert "different content" in (row.error or "")


# -- pieces --------------------------------------------------------------------------------------


def test_one_submitter_per_spool(tmp_path: Path) -> None:
    with submitter_lock(tmp_path), pytest.raises(SpoolBusyError), submitter_lock(tmp_path):
        pass
    with submitter_lock(tmp_path):  # released when the first holder let go
        pass


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    backoff = Backoff(initial_s=1, factor=2, maximum_s=10)
    assert [backoff.delay_s(n, 0.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]
    assert [backoff.delay_s(n, 0.999) for n in (1, 6)] == [
        pytest.approx(0.9995),
        pytest.approx(9.995),
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 20.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("-1", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    now = 1445412460.0  # Wed, 21 Oct 2015 07:27:40 GMT
    assert _retry_after_s(value, now) == seconds
