"""The log's witness client (log_server.witnesses) on SQLite and PostgreSQL.

The witness is the real app (verifier.witness) in process, reached through httpx's
ASGITransport: checkpoints are submitted, a stale size is followed, cosignatures are stored,
and GET /checkpoint's note carries them; with a quorum, only a checkpoint that has it is
served. The log itself is driven step by step with the sequencer at a fixed clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from log_server.sequencer import sequence
from log_server.storage import CosignatureRecord, Storage
from log_server.witnesses import Witnessing, witness_id
from tests.log_server.conftest import LOG, NOW_MS, ORIGIN, make_edge_key, make_receipt
from tlog.checkpoint import open_checkpoint
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_signature_line, format_vkey
from tlog.policy import parse_policy
from verifier.witness import create_witness_app

pytestmark = pytest.mark.anyio
W1 = SigningKey("w1.example", b"\x61" * 32)
W2 = SigningKey("w2.example", b"\x62" * 32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _policy(quorum: str) -> str:
    lines = [
        f"witness w{i} {format_vkey(k.verifier(ALG_COSIGNATURE_V1))} http://w{i}.test"
        for i, k in ((1, W1), (2, W2))
    ]
    return "\n".join([*lines, f"quorum {quorum}"]) + "\n"


@asynccontextmanager
async def _witnesses(tmp_path: Path) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """Both witnesses behind one transport, routed by host name."""
    apps = {
        f"w{i}.test": create_witness_app(k, {ORIGIN: [LOG.key.verifier()]}, tmp_path / f"{i}.db",
                                         lambda: 1_800_000_000)
        for i, k in ((1, W1), (2, W2))
    }  # fmt: skip
    transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    class Route(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await transports[request.url.host].handle_async_request(request)

    async with (
        apps["w1.test"].router.lifespan_context(apps["w1.test"]),
        apps["w2.test"].router.lifespan_context(apps["w2.test"]),
    ):
        yield Route()


def _grow(storage: Storage, start: int, count: int) -> None:
    """Log ``count`` receipts (the edge key's registration first, on an empty log)."""
    pending = [make_receipt(i) for i in range(start, start + count)]
    if storage.tree_size() == 0:
        pending.insert(0, make_edge_key())  # type: ignore[arg-type]
    outcomes, _ = sequence(storage, LOG, pending, NOW_MS)
    assert all(hasattr(o, "data") for o in outcomes), outcomes


def _witnessing(storage: Storage, quorum: str, **kwargs: object) -> Witnessing:
    return Witnessing(storage, parse_policy(_policy(quorum)), lambda: 1, **kwargs)  # type: ignore[arg-type]


async def test_checkpoints_are_cosigned_and_served_with_the_cosignatures(
    storage: Storage, tmp_path: Path
) -> None:
    _grow(storage, 0, 5)
    async with _witnesses(tmp_path) as transport:
        witnessing = _witnessing(storage, "none", transport=transport)
        await witnessing.submit_latest()
        assert witnessing.outcomes == {"cosigned": 2}
        await witnessing.submit_latest()  # nothing new: nothing sent
        assert witnessing.outcomes == {"cosigned": 2}
        _grow(storage, 5, 7)
        await witnessing.submit_latest()
        # A restarted log knows what was cosigned from its database.
        restarted = _witnessing(storage, "none", transport=transport)
        _grow(storage, 12, 1)
        await restarted.submit_latest()
        assert restarted.outcomes == {"cosigned": 2}
        await witnessing.aclose()
        await restarted.aclose()
    served = witnessing.served()
    assert served is not None
    witnesses = [W1.verifier(ALG_COSIGNATURE_V1), W2.verifier(ALG_COSIGNATURE_V1)]
    opened = open_checkpoint(served, [LOG.key.verifier()], witnesses=witnesses, quorum=2)
    assert opened.checkpoint.tree_size == storage.tree_size() == 14


async def test_a_stale_size_is_followed(storage: Storage, tmp_path: Path) -> None:
    _grow(storage, 0, 3)
    async with _witnesses(tmp_path) as transport:
        first = _witnessing(storage, "none", transport=transport)
        await first.submit_latest()
        _grow(storage, 3, 3)
        # A log that believes the witnesses have cosigned nothing is told their size (409),
        # and succeeds from there with a proof.
        second = _witnessing(storage, "none", transport=transport)
        second.known = {witness_id(w): 0 for w in second.policy.witnesses}
        await second.submit_latest()
        assert second.outcomes == {"stale": 2, "cosigned": 2}
        await first.aclose()
        await second.aclose()


def test_the_quorum_decides_what_is_served(storage: Storage) -> None:
    witnessing = _witnessing(storage, "w2")
    _grow(storage, 0, 1)
    assert witnessing.served() is None  # no checkpoint has the quorum yet
    size2 = storage.latest_checkpoint()
    assert size2 is not None
    for key in (W1, W2):
        witnessing_line = _cosign(storage, key, size2.tree_size)
        assert witnessing_line
    _grow(storage, 2, 3)
    _cosign(storage, W1, 5)  # w1 alone at 5: not the quorum
    served = witnessing.served()
    assert served is not None
    opened = open_checkpoint(
        served, [LOG.key.verifier()], witnesses=[W2.verifier(ALG_COSIGNATURE_V1)], quorum=1
    )
    assert opened.checkpoint.tree_size == 2
    _cosign(storage, W2, 5)
    served = witnessing.served()
    assert served is not None
    assert open_checkpoint(served, [LOG.key.verifier()]).checkpoint.tree_size == 5


def _cosign(storage: Storage, key: SigningKey, size: int) -> str:
    """Store a cosignature of ``key`` on the stored checkpoint of ``size``, as the job would."""
    stored = storage.checkpoint_at(size)
    assert stored is not None
    text = stored.note[: stored.note.rfind(b"\n\n") + 1].decode()
    line = format_signature_line(text, key.cosigner(7)).removesuffix("\n")
    verifier = key.verifier(ALG_COSIGNATURE_V1)
    wid = f"{verifier.name}+{verifier.key_id:08x}"
    storage.put_cosignature(CosignatureRecord(size, wid, stored.root_hash, line, 7))
    assert storage.cosigned_size(wid) == size
    return line
