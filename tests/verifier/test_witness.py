"""The witness app in process: every tlog-witness answer, durability, and atomicity.

The app runs in process under httpx's ASGITransport, inside its own lifespan (which opens
the SQLite state); the logic
is also called directly (``add_checkpoint``) from threads to show two requests racing
against one old size cannot both be cosigned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from tlog.evidence import parse_fork_evidence, verify_fork_evidence
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import ALG_COSIGNATURE_V1, SigningKey
from tlog.proofs import consistency_proof
from tlog.witness import AddCheckpoint, format_add_checkpoint, origin_hash
from verifier.witness import WitnessState, add_checkpoint, create_witness_app

ORIGIN = "log.example/witnessed"
LOG = SigningKey(ORIGIN, b"\x51" * 32)
STRANGER = SigningKey(ORIGIN, b"\x52" * 32)
WITNESS = SigningKey("witness.example", b"\x53" * 32)
WITNESS_V = WITNESS.verifier(ALG_COSIGNATURE_V1)
NOW_S = 1_800_000_000


def _tree(prefix: bytes, size: int, base: int = 0) -> MemoryHashStore:
    store = MemoryHashStore()
    store.append([leaf_hash(b"e%d" % i if i < base else prefix + b"%d" % i) for i in range(size)])
    return store


A = _tree(b"a", 40, base=20)
B = _tree(b"b", 40, base=20)  # agrees with A on the first 20


def _note(store: MemoryHashStore, size: int, key: SigningKey = LOG) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, root_hash(size, store)), [key.signer()])


def _body(store: MemoryHashStore, old: int, new: int, key: SigningKey = LOG) -> bytes:
    proof = consistency_proof(old, new, store) if 0 < old < new else []
    return format_add_checkpoint(AddCheckpoint(old, tuple(proof), _note(store, new, key)))


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def _serving(db: Path, now_s: int = NOW_S) -> AsyncIterator[httpx.AsyncClient]:
    app = create_witness_app(WITNESS, {ORIGIN: [LOG.verifier()]}, db, lambda: now_s)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://witness") as client:
            yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _serving(tmp_path / "w.db") as serving:
        yield serving


async def _post(client: httpx.AsyncClient, body: bytes) -> tuple[int, str]:
    response = await client.post("/add-checkpoint", content=body)
    return response.status_code, response.text


async def test_cosigning_a_growing_log(client: httpx.AsyncClient) -> None:
    status, text = await _post(client, _body(A, 0, 10))
    assert status == 200
    cosigned = open_checkpoint(
        _note(A, 10) + text.encode(), [LOG.verifier()], witnesses=[WITNESS_V], quorum=1
    )
    assert cosigned.note.signed_by(WITNESS_V).timestamp_s == NOW_S  # type: ignore[union-attr]
    assert (await _post(client, _body(A, 10, 25)))[0] == 200
    assert (await _post(client, _body(A, 25, 25)))[0] == 200  # again: a fresh cosignature
    latest = await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")
    assert latest.status_code == 200
    opened = open_checkpoint(latest.content, [LOG.verifier()], witnesses=[WITNESS_V], quorum=1)
    assert opened.checkpoint.tree_size == 25


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not a request", 400),
        (b"old 5\n\n" + b"x\n", 400),
        (_body(A, 0, 10).replace(b"old 0", b"old 11"), 400),  # old > size
        (_body(A, 0, 10, STRANGER), 403),
        (format_add_checkpoint(AddCheckpoint(0, (), sign_checkpoint(
            Checkpoint("other.example/log", 1, root_hash(1, A)),
            [SigningKey("other.example/log", b"\x01" * 32).signer()]))), 404),
    ],
)  # fmt: skip
async def test_bad_requests(client: httpx.AsyncClient, body: bytes, status: int) -> None:
    assert (await _post(client, body))[0] == status
    assert (
        await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")
    ).status_code == 404  # nothing kept


async def test_stale_sizes_get_409_with_the_size(client: httpx.AsyncClient) -> None:
    assert (await _post(client, _body(A, 0, 10)))[0] == 200
    response = await client.post("/add-checkpoint", content=_body(A, 5, 20))
    assert response.status_code == 409
    assert response.headers["content-type"] == "text/x.tlog.size"
    assert response.content == b"10\n"
    assert (await _post(client, _body(A, 0, 20)))[0] == 409


async def test_inconsistent_checkpoints_get_422_and_are_kept_as_evidence(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert (await _post(client, _body(A, 0, 30)))[0] == 200
    assert (await _post(client, _body(B, 30, 35)))[0] == 422  # B's proof misses A's root
    assert (await _post(client, _body(B, 30, 30)))[0] == 422  # one size, another root
    wrong = AddCheckpoint(30, (b"\x00" * 32,), _note(A, 30))
    assert (await _post(client, format_add_checkpoint(wrong)))[0] == 422  # equal sizes, a proof
    state = WitnessState(tmp_path / "w.db")
    refused = state.refused(ORIGIN)
    state.close()
    assert [(r[0], r[1]) for r in refused] == [(30, 35), (30, 30), (30, 30)]
    old, new = verify_fork_evidence(parse_fork_evidence(refused[0][3]), [LOG.verifier()])
    assert (old.checkpoint.tree_size, new.checkpoint.tree_size) == (30, 35)
    latest = (await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")).content
    assert open_checkpoint(latest, [LOG.verifier()]).checkpoint.root_hash == root_hash(30, A)


async def test_a_proof_from_zero_must_be_empty(client: httpx.AsyncClient) -> None:
    body = format_add_checkpoint(AddCheckpoint(0, (b"\x00" * 32,), _note(A, 10)))
    assert (await _post(client, body))[0] == 422


async def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    async with _serving(tmp_path / "w.db") as first:
        assert (await _post(first, _body(A, 0, 12)))[0] == 200
    async with _serving(tmp_path / "w.db") as second:
        assert (await _post(second, _body(A, 0, 20)))[0] == 409
        assert (await _post(second, _body(A, 12, 20)))[0] == 200


def test_racing_requests_cosign_one_branch_only(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "race.db")
    logs = {ORIGIN: [LOG.verifier()]}
    assert add_checkpoint(state, WITNESS, logs, _body(A, 0, 20), NOW_S).status == 200
    bodies = [_body(A if i % 2 else B, 20, 30 + i % 5) for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: add_checkpoint(state, WITNESS, logs, b, NOW_S), bodies))
    statuses = [a.status for a in answers]
    assert statuses.count(200) == 1 and set(statuses) <= {200, 409}
    winner = bodies[statuses.index(200)]
    latest = state.latest(ORIGIN)
    state.close()
    assert latest is not None and latest.checkpoint in winner
