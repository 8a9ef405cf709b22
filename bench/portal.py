"""Benchmark: the API calls behind each portal page, on a log of 10**6 entries, against a floor.

A script, not a test: it prints figures and asserts none. Nothing in meterlog imports it.

The log. Built once per ``--entries`` into ``--cache-dir`` (default ``.bench/portal`` in the
working directory) and reused while its ``built.json`` says it is complete: the data dir of a
real ``meterlog serve`` (its log key, operator key, SQLite database) written through the
server's own sequencer (``log_server.sequencer.sequence``: the same checks, encoding, stored
hashes and signed checkpoints as a live seal), in seals of 4,096 entries (the pool's
default), so it holds about 250 checkpoints. Before the receipts, ``--edges`` edge keys and
``--creators`` creators are registered (operator-signed entries). Receipt ``i`` is signed by
edge ``i % edges``; its creator is drawn from a Zipf-like spread (creator ``k`` weighs
1/(k+1)) with a fixed seed, each creator has 5 pieces of content, and there are 200
consumers, each with 10 jobs. After 90 % of the receipts a billing run is logged: one
``statement`` entry per creator, signed by a billing key, whose documents (written under
``runs/`` in the cache, one line per piece of content naming the leaf indices of its
receipts; 1 minor unit per receipt, so the money adds up as tlog.statement checks it) the
server serves with ``--statements``. The last 10 % are the creators' provisional usage.
Building 10**6 entries takes several minutes on 2 cores (signing dominates); ``--entries``
makes a smaller log.

The measurement. ``meterlog serve`` (real uvicorn, SQLite) is started on loopback on the
cached data dir with ``--statements``. Each page's requests (``PAGES``: what the portal page
fetches to show its first screen, listed below) are sent one after another over one
keep-alive HTTP connection (httpx), as a browser with a warm connection would; the page's
time is from its first request to its last answer read in full. Each page is timed
``--rounds`` times, picking a different creator, consumer, job or receipt each round (the
same ones for every page kind, from a fixed seed), after ``--warmup`` untimed rounds. The
floor is ``GET /healthz`` (one small query and a JSON answer: a bare round trip through the
same server), timed the same number of times in the same run, interleaved with the pages.

Figures, with ``--json`` one JSON object per line on stdout, each exactly ``{"metric",
"value", "unit", "floor", "ratio"}``; notes go to stderr. Without it readable lines.

- ``page_<name>_p50_ms``, ``page_<name>_p95_ms``: the page's time; ``floor`` the floor's
  p50 (or p95) in ms; ``ratio`` page / floor.
- ``page_<name>_p95_vs_target``: the p95 in ms, ``floor`` 300 (the issue's target),
  ``ratio`` p95 / 300 (below 1.0 meets it).
- ``floor_healthz_p50_ms``: the floor itself.
- ``build_entries_per_s``: how fast the cache was built (only when built in this run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from verify import BenchError, serve  # bench/verify.py: a built log served on loopback

from log_server.sequencer import Logged, LogIdentity, sequence
from log_server.storage import Storage, StoredCheckpoint
from tlog.entry import (
    Creator,
    EdgeKey,
    Entry,
    Receipt,
    Statement,
    sign_creator,
    sign_edge_key,
    sign_receipt,
    sign_statement,
)
from tlog.note import SigningKey, format_skey, format_vkey
from tlog.parsing import encode_b64
from tlog.statement import (
    StatementDocument,
    StatementLine,
    Totals,
    format_statement,
)

ORIGIN = "bench.example/portal"
SEAL = 4096
CONSUMERS = 200
JOBS_PER_CONSUMER = 10
CONTENT_PER_CREATOR = 5
TARGET_MS = 300.0
BILLING = SigningKey("billing.bench", bytes([7]) * 32)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the log ------------------------------------------------------------------------------------


def edge_key(e: int) -> SigningKey:
    return SigningKey(f"edge-{e}", bytes([1, e % 256]) + bytes(30))


def creator_key(c: int) -> SigningKey:
    return SigningKey(f"acct:creator-{c}", bytes([2, c % 256, c // 256]) + bytes(29))


def content_id(c: int, k: int) -> str:
    return "sha256:" + f"{c:06x}{k:02x}".ljust(64, "0")


def manifest_of(c: int, k: int) -> str:
    return "sha256:" + f"{c:06x}{k:02x}".ljust(64, "f")


@dataclass(frozen=True, slots=True)
class Spread:
    """Who receipt ``i`` is about: its creator, content, consumer and job."""

    creators: int
    seed: int = 1

    def draws(self, count: int) -> list[tuple[int, int, int, int]]:
        rng = random.Random(self.seed)
        weights = [1 / (k + 1) for k in range(self.creators)]
        creators = rng.choices(range(self.creators), weights, k=count)
        out = []
        for c in creators:
            consumer = rng.randrange(CONSUMERS)
            job = consumer * JOBS_PER_CONSUMER + rng.randrange(JOBS_PER_CONSUMER)
            out.append((c, rng.randrange(CONTENT_PER_CREATOR), consumer, job))
        return out


def receipt(i: int, draw: tuple[int, int, int, int], edges: int, served_at_ms: int) -> Receipt:
    c, k, consumer, job = draw
    key = edge_key(i % edges)
    return sign_receipt(
        Receipt(
            request_id=f"bench-{i}", edge=key.name, consumer_id=f"consumer-{consumer}",
            token_id=f"token-{consumer}", job_id=f"job-{job}", scope="training",
            content_id=content_id(c, k), creator_id=creator_key(c).name,
            manifest=manifest_of(c, k), bytes_sent=10_000 + i % 90_000,
            cache="hit" if i % 3 else "miss", served_at_ms=served_at_ms,
        ),
        key,
    )  # fmt: skip


def seal(storage: Storage, log: LogIdentity, entries: Sequence[Entry], now_ms: int) -> list[int]:
    outcomes, _ = sequence(storage, log, entries, now_ms)
    indexes = []
    for outcome in outcomes:
        if not isinstance(outcome, Logged):
            raise BenchError(f"the sequencer refused a bench entry: {outcome}")
        indexes.append(outcome.index)
    return indexes


def statement_document(
    c: int, lines: dict[int, list[int]], checkpoint: StoredCheckpoint, now_ms: int
) -> StatementDocument:
    end = checkpoint.tree_size
    key = creator_key(c)
    statement_lines = []
    for number, k in enumerate(sorted(lines), 1):
        count = len(lines[k])
        statement_lines.append(
            StatementLine(
                number=number, type="event", period="current", content_id=content_id(c, k),
                manifest=manifest_of(c, k), version=1, quantity=str(count), rate="0.01",
                amount_minor=count, fee_minor=0, reserve_minor=0, creator_minor=count,
                leaf_indices=tuple(lines[k]), scope="training",
            )
        )  # fmt: skip
    total = sum(len(v) for v in lines.values())
    return StatementDocument(
        origin=ORIGIN, checkpoint=checkpoint.note.decode(), tree_size=end,
        root_hash=encode_b64(checkpoint.root_hash), range_start=0,
        range_end=end, period_start_ms=0, period_end_ms=now_ms,
        policy_digest="sha256:" + "00" * 32, policy='currency = "USD"\n', currency="USD",
        minor_exponent=2, billing_key=format_vkey(BILLING.verifier()), creator_id=key.name,
        creator_key=format_vkey(key.verifier()), creator_index=0,
        totals=Totals(gross_minor=total, fee_minor=0, reserve_minor=0, creator_minor=total,
                      carry_in_minor=0, released_minor=0, payable_minor=total,
                      paid_minor=total, carry_out_minor=0),
        reserve_release_ms=now_ms, lines=tuple(statement_lines),
    )  # fmt: skip


def build(root: Path, entries: int, edges: int, creators: int) -> float:
    """Build the cached log (see the module docstring); its entries per second."""
    if root.exists():
        shutil.rmtree(root)
    runs = root / "runs" / "run-1"
    runs.mkdir(parents=True)
    data_dir = root / "data"
    data_dir.mkdir()
    # The key files `meterlog serve` makes on first start (log_server.config.DataDir), made
    # here from fixed seeds; the server reuses them. (log_server.config is not imported: from
    # bench/, `anchor` would be bench/anchor.py.)
    log_key = SigningKey(ORIGIN, bytes([3]) * 32)
    operator_key = SigningKey(f"{ORIGIN}/operator", bytes([4]) * 32)
    for name, key in (("log.key", log_key), ("operator.key", operator_key)):
        (data_dir / name).write_text(format_skey(key) + "\n")
        (data_dir / name).chmod(0o600)
    storage = Storage.open(f"sqlite:///{data_dir / 'log.db'}")
    log = LogIdentity(ORIGIN, log_key)
    now_ms = time.time_ns() // 1_000_000
    started = time.perf_counter()
    seal(storage, log, [
        sign_edge_key(EdgeKey(action="register", edge=edge_key(e).name,
                              key=format_vkey(edge_key(e).verifier()), valid_from_ms=0),
                      operator_key)
        for e in range(edges)
    ], now_ms)  # fmt: skip
    seal(storage, log, [
        sign_creator(Creator(creator_key(c).name, format_vkey(creator_key(c).verifier()), "USD"),
                     operator_key)
        for c in range(creators)
    ], now_ms)  # fmt: skip
    receipts = entries - storage.tree_size() - creators
    billed_after = receipts * 9 // 10
    draws = Spread(creators).draws(receipts)
    lines: dict[int, dict[int, list[int]]] = {}
    served_at_ms = now_ms - 60_000
    for start in range(0, receipts, SEAL):
        if start <= billed_after < start + SEAL:
            head = billed_after - start
            batch = [receipt(i, draws[i], edges, served_at_ms) for i in range(start, billed_after)]
            for i, index in zip(range(start, billed_after), seal(storage, log, batch, now_ms),
                                strict=True):  # fmt: skip
                c, k, _, _ = draws[i]
                lines.setdefault(c, {}).setdefault(k, []).append(index)
            bill(storage, log, runs, lines, now_ms)
            rest = range(start + head, min(start + SEAL, receipts))
        else:
            rest = range(start, min(start + SEAL, receipts))
        batch = [receipt(i, draws[i], edges, served_at_ms) for i in rest]
        indexes = seal(storage, log, batch, now_ms) if batch else []
        if start + SEAL <= billed_after:
            for i, index in zip(rest, indexes, strict=True):
                c, k, _, _ = draws[i]
                lines.setdefault(c, {}).setdefault(k, []).append(index)
        if (start // SEAL) % 25 == 0:
            note(f"built {storage.tree_size():,} entries ({time.perf_counter() - started:.0f} s)")
    size = storage.tree_size()
    storage.close()
    rate = size / (time.perf_counter() - started)
    (root / "built.json").write_text(json.dumps({"entries": size, "edges": edges,
                                                 "creators": creators}))  # fmt: skip
    return rate


def bill(
    storage: Storage,
    log: LogIdentity,
    runs: Path,
    lines: dict[int, dict[int, list[int]]],
    now_ms: int,
) -> None:
    """One billing run over [0, tree size): a statement per creator with receipts."""
    checkpoint = storage.latest_checkpoint()
    assert checkpoint is not None
    end = checkpoint.tree_size
    statements: list[Entry] = []
    for c in sorted(lines):
        document = statement_document(c, lines[c], checkpoint, now_ms)
        data = format_statement(document)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (runs / f"statement-creator-{c}.json").write_bytes(data)
        statements.append(
            sign_statement(
                Statement(digest=digest, creator_id=creator_key(c).name, currency="USD",
                          range_start=0, range_end=end, period_end_ms=now_ms,
                          lines=len(document.lines), paid_minor=document.totals.paid_minor,
                          carry_minor=0, reserve_minor=0, reserve_release_ms=now_ms),
                BILLING,
            )
        )  # fmt: skip
    seal(storage, log, statements, now_ms)


# -- the pages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """What one round looks at: a creator, a consumer, a job, a receipt, old tree size."""

    creator: str
    consumer: str
    job: str
    edge: str
    request_id: str
    content: str
    old_size: int


Page = Callable[[httpx.Client, Subject], None]


def get(client: httpx.Client, path: str, **params: object) -> httpx.Response:
    response = client.get(path, params={k: str(v) for k, v in params.items()})
    if response.status_code != 200:
        url, status = response.request.url, response.status_code
        raise BenchError(f"GET {url}: {status} {response.text[:300]}")
    return response


def log_page(client: httpx.Client, s: Subject) -> None:
    """portal/static/js/log.js: the trust note, the checkpoint, growth, anchors, registry."""
    get(client, "/v1/log")
    get(client, "/checkpoint")
    get(client, "/v1/growth", points=120)
    get(client, "/v1/anchors", order="desc", status="final", limit=20)
    get(client, "/v1/edge-keys")


def _bundle_size(bundle: str) -> int:
    """The tree size of a bundle's checkpoint (the line after the blank one)."""
    return int(bundle.split("\n\n", 1)[1].split("\n")[1])


def receipt_page(client: httpx.Client, s: Subject) -> None:
    """receipt.js, a lookup by request id that verifies the one receipt found: its bundle's
    checkpoint against the latest, the edge key's entry and its inclusion."""
    get(client, "/v1/log")
    found = get(client, "/v1/receipts", request=s.request_id, limit=20).json()["receipts"]
    latest = get(client, "/checkpoint").text
    size = int(latest.split("\n")[1])
    get(client, "/v1/proofs/consistency", old_size=_bundle_size(found[0]["bundle"]), new_size=size)
    keys = get(client, "/v1/edge-keys").json()["edge_keys"]
    index = next(k["entry_index"] for k in keys if k["edge"] == s.edge)
    get(client, "/v1/entries", start=index, end=index + 1)
    get(client, "/v1/proofs/inclusion", index=index, tree_size=size)


def _lookup(by: str) -> Page:
    def page(client: httpx.Client, s: Subject) -> None:
        """receipt.js, a lookup listing 20 receipts by content, consumer or job."""
        get(client, "/v1/log")
        get(client, "/v1/receipts", **{by: getattr(s, by)}, limit=20)

    return page


def auditor_page(client: httpx.Client, s: Subject) -> None:
    """auditor.js: the latest 100 checkpoints, the latest, one consistency proof."""
    get(client, "/v1/log")
    get(client, "/v1/checkpoints", order="desc", limit=100)
    latest = get(client, "/checkpoint").text
    get(client, "/v1/proofs/consistency", old_size=s.old_size, new_size=latest.split("\n")[1])


def creator_page(client: httpx.Client, s: Subject) -> None:
    """creator.js, opening a creator: provisional usage and its first page, the newest
    statement's document, entry, inclusion and open disputes."""
    get(client, "/v1/creators")
    get(client, "/v1/log")
    size = get(client, "/checkpoint").text.split("\n")[1]
    provisional = get(client, f"/v1/creators/{s.creator}/provisional").json()
    get(client, "/v1/edge-keys")
    get(client, "/v1/receipts", creator=s.creator, after=provisional["from_index"] - 1, limit=20)
    statements = get(client, "/v1/statements", creator=s.creator, latest=1, limit=20).json()
    for statement in statements["statements"][:1]:
        digest, index = statement["digest"], statement["entry_index"]
        get(client, f"/v1/statements/{digest}/document")
        get(client, "/v1/entries", start=index, end=index + 1)
        get(client, "/v1/proofs/inclusion", index=index, tree_size=size)
        get(client, "/v1/disputes", creator=s.creator, statement=digest, open=1)


def creator_line(client: httpx.Client, s: Subject) -> None:
    """creator.js, "Receipts of line 1": the first 20 receipts behind the line."""
    statements = get(client, "/v1/statements", creator=s.creator, latest=1, limit=1).json()
    for statement in statements["statements"]:
        get(client, f"/v1/statements/{statement['digest']}/lines/1/receipts", limit=20)


def buyer_page(client: httpx.Client, s: Subject) -> None:
    """buyer.js: the checkpoint, the registry, the job's first 20 receipts."""
    get(client, "/v1/log")
    get(client, "/checkpoint")
    get(client, "/v1/edge-keys")
    get(client, "/v1/receipts", job=s.job, limit=20)


def buyer_download(client: httpx.Client, s: Subject) -> None:
    """The Buyer page's download: every bundle of the job, one zip (not a page load)."""
    get(client, "/v1/receipts.zip", job=s.job)


PAGES: dict[str, Page] = {
    "log": log_page,
    "receipt": receipt_page,
    "receipt_by_content": _lookup("content"),
    "receipt_by_consumer": _lookup("consumer"),
    "receipt_by_job": _lookup("job"),
    "auditor": auditor_page,
    "creator": creator_page,
    "creator_line": creator_line,
    "buyer": buyer_page,
    "buyer_zip": buyer_download,
}


def subjects(client: httpx.Client, meta: dict[str, int], rounds: int) -> list[Subject]:
    rng = random.Random(7)
    size = get(client, "/healthz").json()["tree_size"]
    sizes: list[int] = []
    after = 0
    while True:
        page = get(client, "/v1/checkpoints", after=after, limit=1000).json()
        sizes += [c["tree_size"] for c in page["checkpoints"] if c["tree_size"] > 0]
        if len(page["checkpoints"]) < 1000:
            break
        after = page["checkpoints"][-1]["id"]
    first = meta["edges"] + meta["creators"]
    out = []
    for _ in range(rounds):
        i = rng.randrange(size - first - meta["creators"])
        entry = get(client, "/v1/entries", start=first + i, end=first + i + 1).json()
        data = json.loads(entry["entries"][0]["entry"])
        if data["kind"] != "receipt":  # a statement: take the receipt after it
            continue
        out.append(Subject(
            creator=data["creator_id"], consumer=data["consumer_id"], job=data["job_id"],
            edge=data["edge"], request_id=data["request_id"], content=data["content_id"],
            old_size=rng.choice(sizes),
        ))  # fmt: skip
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, meta: dict[str, int], rounds: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in [*PAGES, "floor"]}
    with httpx.Client(base_url=url, timeout=60) as client:
        chosen = subjects(client, meta, rounds + warmup)
        for n, subject in enumerate(chosen):
            for name, page in [*PAGES.items(), ("floor", lambda c, s: get(c, "/healthz"))]:
                started = time.perf_counter()
                page(client, subject)
                elapsed = (time.perf_counter() - started) * 1000
                if n >= warmup:
                    times[name].append(elapsed)
    return times


def figures(times: dict[str, list[float]]) -> list[dict[str, object]]:
    floor50 = statistics.median(times["floor"])
    floor95 = percentile(times["floor"], 0.95)
    out: list[dict[str, object]] = [
        {"metric": "floor_healthz_p50_ms", "value": round(floor50, 2), "unit": "ms",
         "floor": None, "ratio": None},
    ]  # fmt: skip
    for name in PAGES:
        p50 = statistics.median(times[name])
        p95 = percentile(times[name], 0.95)
        out += [
            {"metric": f"page_{name}_p50_ms", "value": round(p50, 2), "unit": "ms",
             "floor": round(floor50, 2), "ratio": round(p50 / floor50, 1)},
            {"metric": f"page_{name}_p95_ms", "value": round(p95, 2), "unit": "ms",
             "floor": round(floor95, 2), "ratio": round(p95 / floor95, 1)},
            {"metric": f"page_{name}_p95_vs_target", "value": round(p95, 2), "unit": "ms",
             "floor": TARGET_MS, "ratio": round(p95 / TARGET_MS, 3)},
        ]  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--edges", type=int, default=8)
    parser.add_argument("--creators", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path(".bench/portal"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    root = args.cache_dir / f"log-{args.entries}"
    built = root / "built.json"
    results: list[dict[str, object]] = []
    if not built.exists():
        note(f"building a log of {args.entries:,} entries in {root} (cached for later runs)")
        rate = build(root, args.entries, args.edges, args.creators)
        results.append({"metric": "build_entries_per_s", "value": round(rate),
                        "unit": "entries/s", "floor": None, "ratio": None})  # fmt: skip
    meta = json.loads(built.read_text())
    process, url = serve(
        root / "data", root / "server.log", ORIGIN, ["--statements", str(root / "runs")]
    )
    try:
        note(f"measuring on {meta['entries']:,} entries at {url}")
        times = measure(url, meta, args.rounds, args.warmup)
    finally:
        process.terminate()
        process.wait(timeout=60)
    results += figures(times)
    note(f"load average: {os.getloadavg()[0]:.2f}; rounds: {len(times['floor'])}")
    for figure in results:
        if args.json:
            print(json.dumps(figure))
        else:
            extra = ""
            if figure["ratio"] is not None:
                extra = f" (floor {figure['floor']}, ratio {figure['ratio']})"
            print(f"{figure['metric']:>32}: {figure['value']} {figure['unit']}{extra}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/portal.py: {exc}", file=sys.stderr)
        sys.exit(1)
