"""The witness app in process: every tlog-witness answer, durability, and atomicity.

The app runs in process under httpx's ASGITransport, inside its own lifespan (which opens
the SQLite state); the logic
is also called directly (``add_checkpoint``) from threads to show two requests racing
against one old size cannot both be cosigned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from cli.main import main
from tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from tlog.errors import MalformedError
from tlog.evidence import parse_fork_evidence, verify_fork_evidence
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_vkey
from tlog.proofs import consistency_proof
from tlog.witness import AddCheckpoint, format_add_checkpoint, origin_hash
from verifier.witness import FailureLimit, WitnessState, add_checkpoint, create_witness_app

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
C = _tree(b"c", 40, base=25)  # agrees with A on the first 25


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
async def _serving(
    db: Path,
    now_s: int = NOW_S,
    *,
    failures: FailureLimit | None = None,
    monotonic: Callable[[], float] = lambda: 0.0,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_witness_app(
        WITNESS, {ORIGIN: [LOG.verifier()]}, db, lambda: now_s, failures=failures,
        monotonic_s=monotonic,
    )  # fmt: skip
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://witness") as client:
            yield client


@asynccontextmanager
async def _other_address(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same app from another address (10.0.0.2)."""
    app = client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=("10.0.0.2", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://witness") as other:
        yield other


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


async def test_a_fork_gets_422_and_is_kept_once_as_evidence(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert (await _post(client, _body(A, 0, 30)))[0] == 200
    assert (await _post(client, _body(B, 30, 35)))[0] == 422  # B's proof shows B's root at 30
    assert (await _post(client, _body(B, 30, 30)))[0] == 422  # the same fork, at one size
    assert (await _post(client, _body(B, 30, 40)))[0] == 422  # the same fork, again
    wrong = AddCheckpoint(30, (b"\x00" * 32,), _note(A, 30))
    assert (await _post(client, format_add_checkpoint(wrong)))[0] == 422  # equal sizes, a proof
    assert (await _post(client, _body(C, 30, 33)))[0] == 422  # another fork
    state = WitnessState(tmp_path / "w.db")
    refused = state.refused(ORIGIN)
    state.close()
    # Once per other root at the cosigned size: B's, then C's.
    assert [(r[0], r[1]) for r in refused] == [(30, 35), (30, 33)]
    fork = verify_fork_evidence(parse_fork_evidence(refused[0][3]), [LOG.verifier()])
    assert (fork.tree_size, fork.new_size) == (30, 35)
    assert (fork.root_hash, fork.other_root) == (root_hash(30, A), root_hash(30, B))
    evidence = tmp_path / "refused.evidence"
    evidence.write_bytes(refused[1][3])
    vkey = format_vkey(LOG.verifier())
    assert main(["verify", "evidence", str(evidence), "--key", vkey]) == 10
    latest = (await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")).content
    assert open_checkpoint(latest, [LOG.verifier()]).checkpoint.root_hash == root_hash(30, A)


def _junk(i: int) -> bytes:
    """200 kinds of request that prove nothing, against a witness that cosigned A at 30: the
    log's own published checkpoints with proofs of garbage, a proof from a power of two,
    proofs where none belongs, a stranger's signature, another origin, bytes."""
    a40 = _note(A, 40)
    honest = consistency_proof(30, 40, A)
    kind = i % 8
    if kind == 0:
        proof = tuple(bytes([i % 256]) * 32 for _ in honest)
        return format_add_checkpoint(AddCheckpoint(30, proof, a40))
    if kind == 1:
        flipped = (bytes([honest[0][0] ^ (1 + i % 255)]) + honest[0][1:], *honest[1:])
        return format_add_checkpoint(AddCheckpoint(30, flipped, a40))
    if kind == 2:
        return format_add_checkpoint(AddCheckpoint(30, (), a40))
    if kind == 3:
        return format_add_checkpoint(AddCheckpoint(30, (b"\x07" * 32,) * (i % 5 + 1), _note(A, 30)))
    if kind == 4:
        return _body(B, 30, 35, STRANGER)
    if kind == 5:
        other = SigningKey("other.example/log", b"\x01" * 32)
        note = sign_checkpoint(
            Checkpoint("other.example/log", 31, root_hash(31, A)), [other.signer()]
        )
        return format_add_checkpoint(AddCheckpoint(30, (), note))
    if kind == 6:
        return b"old 30\n" + bytes([i % 256]) * (i + 1)
    return format_add_checkpoint(AddCheckpoint(30, tuple(honest[:-1]), a40))  # one too few


async def test_junk_stores_nothing(tmp_path: Path) -> None:
    """200 junk posts, every one processed (the failure limit set out of the way): each is
    refused, none is cosigned, and not one row is kept."""
    async with _serving(tmp_path / "w.db", failures=FailureLimit(burst=1000)) as client:
        assert (await _post(client, _body(A, 0, 30)))[0] == 200
        statuses = [(await _post(client, _junk(i)))[0] for i in range(200)]
        assert set(statuses) <= {400, 403, 404, 422} and statuses.count(422) >= 100
        latest = (await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")).content
    assert open_checkpoint(latest, [LOG.verifier()]).checkpoint.tree_size == 30
    assert _rows(tmp_path / "w.db") == 0


async def test_junk_is_rate_limited_and_stores_nothing(tmp_path: Path) -> None:
    """With the default limit: the first 10 junk posts of an address are answered, the rest
    get 429 with Retry-After before their body is read; another address is not affected."""
    clock = [1000.0]
    async with _serving(tmp_path / "w.db", monotonic=lambda: clock[0]) as client:
        assert (await _post(client, _body(A, 0, 30)))[0] == 200
        answers = [await client.post("/add-checkpoint", content=_junk(i)) for i in range(200)]
        statuses = [a.status_code for a in answers]
        assert 429 not in statuses[:10] and statuses[10:] == [429] * 190
        assert answers[10].headers["retry-after"] == "6"
        async with _other_address(client) as other:
            assert (await _post(other, _body(A, 30, 32)))[0] == 200
        clock[0] += 6  # one more failure may come in now (409: the size moved on), no more
        assert (await _post(client, _junk(0)))[0] == 409
        assert (await _post(client, _junk(0)))[0] == 429
    assert _rows(tmp_path / "w.db") == 0


async def test_an_honest_log_is_not_limited(tmp_path: Path) -> None:
    """Cosigned requests give their token back: a log cosigned every time never runs out,
    however often it comes; one that also meets a 409 each round (a restart) spends a
    token a round, which comes back within the round's interval."""
    clock = [0.0]
    limit = FailureLimit(burst=2, interval_s=60)
    async with _serving(tmp_path / "w.db", failures=limit, monotonic=lambda: clock[0]) as client:
        assert (await _post(client, _body(A, 0, 1)))[0] == 200
        for size in range(2, 20):
            assert (await _post(client, _body(A, size - 1, size)))[0] == 200
        for size in range(20, 40):
            clock[0] += 60
            assert (await _post(client, _body(A, 0, size)))[0] == 409  # stale, then follows
            assert (await _post(client, _body(A, size - 1, size)))[0] == 200


def test_the_failure_limit_is_a_token_bucket_per_address() -> None:
    limit = FailureLimit(burst=3, interval_s=10, max_clients=2)
    assert [limit.admit("a", 0) for _ in range(3)] == [None, None, None]
    assert limit.admit("a", 0) == 10
    assert limit.admit("a", 5) == 5
    assert limit.admit("a", 10) is None  # one token back after 10 s
    assert limit.admit("a", 10) == 10
    limit.refund("a")
    assert limit.admit("a", 10) is None
    assert limit.admit("b", 10) is None and limit.admit("c", 10) is None  # "a" forgotten
    assert limit.admit("a", 10) is None
    with pytest.raises(MalformedError):
        FailureLimit(burst=0)


def test_at_most_max_refused_forks_are_kept(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db", max_refused=3)
    logs = {ORIGIN: [LOG.verifier()]}
    assert add_checkpoint(state, WITNESS, logs, _body(A, 0, 30), NOW_S).status == 200
    for branch in range(6):
        forked = _tree(b"x%d-" % branch, 40, base=25)
        assert add_checkpoint(state, WITNESS, logs, _body(forked, 30, 40), NOW_S).status == 422
    assert len(state.refused(ORIGIN)) == 3
    state.close()


def test_a_witness_database_of_before_keeps_its_rows_out_of_the_count(tmp_path: Path) -> None:
    """A database made before refusals had to be evidence: it opens, its old rows (junk,
    maybe) are left alone and do not count, and a fork is kept."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE refused (id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, "
        "old_size INTEGER NOT NULL, tree_size INTEGER NOT NULL, reason TEXT NOT NULL, "
        "evidence BLOB NOT NULL, refused_at_s INTEGER NOT NULL);"
    )
    db.executemany(
        "INSERT INTO refused (origin, old_size, tree_size, reason, evidence, refused_at_s) "
        "VALUES (?, 30, 40, 'junk', x'', 0)",
        [(ORIGIN,)] * 5,
    )
    db.commit()
    db.close()
    state = WitnessState(path, max_refused=1)
    logs = {ORIGIN: [LOG.verifier()]}
    assert add_checkpoint(state, WITNESS, logs, _body(A, 0, 30), NOW_S).status == 200
    assert add_checkpoint(state, WITNESS, logs, _body(B, 30, 35), NOW_S).status == 422
    assert [(r[0], r[1]) for r in state.refused(ORIGIN)] == [(30, 35)]
    state.close()
    state = WitnessState(path)  # opened again: already migrated
    assert len(state.refused(ORIGIN)) == 1
    state.close()


def _rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])
    finally:
        db.close()


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
