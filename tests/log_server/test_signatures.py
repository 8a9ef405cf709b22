"""The signature checker: the same answers in a worker process and in a thread, and a
worker that dies does not take the server's signature checks with it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from log_server.signatures import SignatureChecker, SignedItem
from tests.log_server.conftest import make_receipt
from tlog.entry import signed_message, verify_receipt
from tlog.errors import InvalidSignatureError
from tlog.note import SigningKey, format_vkey, verify_messages

EDGE = SigningKey("edge-sig", bytes(range(32)))
OTHER = SigningKey("edge-sig", bytes(range(1, 33)))


def items() -> tuple[list[SignedItem], list[bool]]:
    """Signed items, and whether each should verify: good ones, a flipped signature bit,
    a changed message, and a receipt checked against another key of the same name."""
    good = [make_receipt(i, edge_key=EDGE) for i in range(5)]
    vkey = format_vkey(EDGE.verifier())
    batch: list[SignedItem] = [(vkey, signed_message(r), r.signature) for r in good]
    bad_signature = bytes([good[0].signature[0] ^ 1]) + good[0].signature[1:]
    batch.append((vkey, signed_message(good[0]), bad_signature))
    batch.append((vkey, signed_message(good[1]), good[2].signature))
    batch.append((format_vkey(OTHER.verifier()), signed_message(good[3]), good[3].signature))
    return batch, [True] * 5 + [False] * 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def thread() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def test_verify_messages_agrees_with_verify_receipt() -> None:
    batch, want = items()
    got = verify_messages(batch)
    assert [problem is None for problem in got] == want
    for problem in got[5:]:
        assert problem is not None
        assert "signature does not verify: key edge-sig+" in problem
    # The reason is the one verify_receipt gives for the same receipt and key.
    forged = replace(
        make_receipt(1, edge_key=EDGE), signature=make_receipt(2, edge_key=EDGE).signature
    )
    with pytest.raises(InvalidSignatureError) as raised:
        verify_receipt(forged, EDGE.verifier())
    assert got[6] == str(raised.value)


@pytest.mark.parametrize("processes", [0, 1, 2])
@pytest.mark.anyio
async def test_workers_and_thread_give_the_same_answers(
    processes: int, thread: ThreadPoolExecutor
) -> None:
    batch, _ = items()
    checker = SignatureChecker(processes, thread)
    try:
        assert await checker.check(batch) == verify_messages(batch)
        assert await checker.check([]) == []
    finally:
        checker.close()


@pytest.mark.anyio
async def test_a_killed_worker_is_replaced(thread: ThreadPoolExecutor) -> None:
    batch, _ = items()
    checker = SignatureChecker(1, thread)
    try:
        want = await checker.check(batch)
        pool = checker._pool
        assert pool is not None
        (pid,) = pool._processes  # the one worker, started by the first check
        os.kill(pid, signal.SIGKILL)
        assert await checker.check(batch) == want
        assert checker._pool is not pool
    finally:
        checker.close()


def test_a_negative_count_is_refused(thread: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        SignatureChecker(-1, thread)
