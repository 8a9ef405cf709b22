"""Fixtures for the log server's tests: fresh databases, keys, and signed entries.

``storage_url`` runs a test once on SQLite and once on PostgreSQL, each time on a database
created for that test alone and dropped afterwards (PostgreSQL ones are created a few tests
ahead, in the background: see :class:`PostgresDatabases`); ``storage`` opens it. PostgreSQL is the
one at 127.0.0.1:5432 (trust auth, user postgres): when it cannot be reached the PostgreSQL
runs are skipped, except under CI (``CI=true``), where they fail. ``new_storage_url`` makes
more fresh databases of the same kind, for tests that need two.

The module-level helpers (fixed keys, :func:`make_edge_key`, :func:`make_receipt`, the
in-process server :func:`started` and :class:`LogUnderTest`) are plain functions and classes
so that every test module here can import them; the fixtures hand out the same values.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import psycopg2
import pytest
from psycopg2 import sql
from starlette.applications import Starlette

from log_server.sequencer import LogIdentity
from log_server.storage import Storage
from tlog.entry import EdgeKey, Receipt, sign_edge_key, sign_receipt
from tlog.note import SigningKey, format_vkey

# -- databases ----------------------------------------------------------------------------

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout=5"
DATABASE_KINDS = ("sqlite", "postgresql")


def postgres_url(name: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@functools.cache
def _postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can (asked once per test session)."""
    try:
        conn = psycopg2.connect(PG_ADMIN_DSN)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable ({reason})"
    conn.close()
    return None


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; under CI=true, fail it."""
    problem = _postgres_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{problem}. CI must test PostgreSQL: start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
            pytrace=False,
        )
    pytest.skip(problem)


def _admin(statement: sql.Composable) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def create_postgres_database() -> str:
    """Create a new, empty database with a unique name; its name."""
    name = f"meterlog_test_{uuid.uuid4().hex}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_postgres_database(name: str) -> None:
    """Drop a database, even with connections still open (peewee keeps one per thread that
    used a Storage)."""
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def postgres_database(
    create: Callable[[], str] = create_postgres_database,
    drop: Callable[[str], None] = drop_postgres_database,
) -> Iterator[str]:
    """A new, empty PostgreSQL database for the ``with`` block; its URL. Dropped afterwards."""
    require_postgres()
    name = create()
    try:
        yield postgres_url(name)
    finally:
        drop(name)


class PostgresDatabases:
    """Creates fresh databases a few tests ahead of their use, and drops used ones behind.

    CREATE and DROP DATABASE mostly wait for the disk, and a few at once take hardly longer
    than one, so doing them in the background roughly halves the PostgreSQL tests' time.
    Each database still serves one test only. :meth:`close` waits for every drop and drops
    the databases made but never taken.
    """

    def __init__(self, ahead: int = 2) -> None:
        self._ahead = ahead
        self._executor = ThreadPoolExecutor(ahead, thread_name_prefix="meterlog-test-db")
        self._created: deque[Future[str]] = deque()
        self._dropped: list[Future[None]] = []

    def create(self) -> str:
        """The name of a new, empty database; hand it back to :meth:`drop`."""
        while len(self._created) <= self._ahead:
            self._created.append(self._executor.submit(create_postgres_database))
        return self._created.popleft().result()

    def drop(self, name: str) -> None:
        self._dropped.append(self._executor.submit(drop_postgres_database, name))

    def close(self) -> None:
        while self._created:
            name = self._created.popleft().result()
            self._dropped.append(self._executor.submit(drop_postgres_database, name))
        self._executor.shutdown(wait=True)
        for dropped in self._dropped:
            dropped.result()  # a failed drop is reported, not ignored


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    require_postgres()
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.close()


@contextmanager
def fresh_database(
    kind: str, directory: Path, databases: PostgresDatabases | None = None
) -> Iterator[str]:
    """The URL of a new, empty database of ``kind`` ("sqlite" files go in ``directory``;
    PostgreSQL ones come from ``databases`` if given)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'log-{uuid.uuid4().hex}.db'}"
    elif kind == "postgresql":
        if databases is None:
            with postgres_database() as url:
                yield url
        else:
            with postgres_database(databases.create, databases.drop) as url:
                yield url
    else:
        raise ValueError(f"unknown database kind {kind!r}")


def database_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "postgresql"


def _databases(request: pytest.FixtureRequest, kind: str) -> PostgresDatabases | None:
    """The session's PostgresDatabases, started only once a PostgreSQL test needs it."""
    if kind != "postgresql":
        return None
    require_postgres()  # here too: a session fixture's skip or failure would be cached
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases


@pytest.fixture(params=DATABASE_KINDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database for this test alone, on each backend in turn."""
    kind: str = request.param
    with fresh_database(kind, tmp_path, _databases(request, kind)) as url:
        yield url


@pytest.fixture
def new_storage_url(
    request: pytest.FixtureRequest, storage_url: str, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """Makes further fresh databases of the same kind as ``storage_url``."""
    kind = database_kind(storage_url)
    databases = _databases(request, kind)
    with ExitStack() as stack:
        yield lambda: stack.enter_context(fresh_database(kind, tmp_path, databases))


@pytest.fixture
def storage(storage_url: str) -> Iterator[Storage]:
    opened = Storage.open(storage_url)
    try:
        yield opened
    finally:
        opened.close()


# -- keys and entries -----------------------------------------------------------------------

NOW_MS = 1_700_000_000_123
"""The fixed clock of the tests (not a whole second, so seconds are visibly floored)."""
ORIGIN = "log.example/meterlog-test"
LOG_KEY = SigningKey("log.example", bytes(range(32)))
OPERATOR_KEY = SigningKey("operator.example", bytes(range(32, 64)))
EDGE_KEY = SigningKey("edge-1", bytes(range(64, 96)))
EDGE_KEY_2 = SigningKey("edge-1", bytes(range(96, 128)))
"""A second key of the same edge, for rotations."""
OTHER_EDGE_KEY = SigningKey("edge-2", bytes(range(128, 160)))
LOG = LogIdentity(ORIGIN, LOG_KEY)


def key_id(key: SigningKey) -> str:
    """The key ID as receipts and the registry write it: 8 lowercase hex digits."""
    return f"{key.verifier().key_id:08x}"


def make_edge_key(
    edge_key: SigningKey = EDGE_KEY,
    *,
    action: str = "register",
    valid_from_ms: int = 0,
    valid_until_ms: int | None = None,
    replaces: SigningKey | None = None,
    operator: SigningKey = OPERATOR_KEY,
) -> EdgeKey:
    """An ``edge_key`` entry about ``edge_key`` (for its edge), signed by the operator."""
    return sign_edge_key(
        EdgeKey(
            action=action,
            edge=edge_key.name,
            key=format_vkey(edge_key.verifier()),
            valid_from_ms=valid_from_ms,
            valid_until_ms=valid_until_ms,
            replaces=None if replaces is None else key_id(replaces),
        ),
        operator,
    )


def make_receipt(
    i: int,
    served_at_ms: int = NOW_MS - 60_000,
    edge_key: SigningKey = EDGE_KEY,
    **fields: object,
) -> Receipt:
    """Receipt number ``i`` (request_id ``req-<i>``), signed by ``edge_key`` for its edge.

    ``fields`` override any other receipt field (consumer_id, job_id, bytes_sent, ...).
    """
    values: dict[str, object] = {
        "request_id": f"req-{i}",
        "edge": edge_key.name,
        "consumer_id": f"consumer-{i % 3}",
        "token_id": f"token-{i % 3}",
        "scope": "training",
        "content_id": "sha256:" + f"{i % 5:02x}" * 32,
        "creator_id": f"creator-{i % 4}",
        "manifest": "sha256:" + "ab" * 32,
        "bytes_sent": 1000 + i,
        "cache": "hit" if i % 2 else "miss",
        "served_at_ms": served_at_ms,
    }
    values.update(fields)
    return sign_receipt(Receipt(**values), edge_key)  # type: ignore[arg-type]


@pytest.fixture
def log_identity() -> LogIdentity:
    return LOG


@pytest.fixture
def operator_key() -> SigningKey:
    return OPERATOR_KEY


@pytest.fixture
def edge_key() -> SigningKey:
    return EDGE_KEY


@pytest.fixture
def edge_registration() -> EdgeKey:
    """The registration of :data:`EDGE_KEY`, valid from 0 on."""
    return make_edge_key()


# -- the server in this process ----------------------------------------------------------------


@asynccontextmanager
async def started(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` (``log_server.app.create_app``) started, as uvicorn would start it (its lifespan),
    and a client that reaches it in this process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://log.test") as client:
            yield client


@dataclasses.dataclass
class LogUnderTest:
    """A started log server (:func:`started`): its client and its data directory."""

    client: httpx.AsyncClient
    data_dir: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "operator.token").read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        """The headers of an operator's request."""
        return {"Authorization": f"Bearer {self.token}"}

    async def size(self) -> int:
        size: int = (await self.client.get("/healthz")).json()["tree_size"]
        return size
