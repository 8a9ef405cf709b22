"""Benchmark: the portal's pages loading in Chromium on a large log.

A script, not a test: it prints figures and asserts none. Nothing in meterlog imports it.

The log: an existing data dir (``--data-dir``: its ``log.key``, ``log.vkey`` and SQLite
database), such as the 10**6-entry one bench/portal.py builds under ``.bench/portal/``. This
script builds nothing; it copies the database (SQLite's backup API, so a server still using
the original is no matter) into a temporary data dir, and serves the copy with a real
``meterlog serve`` on loopback (``--checkpoint-interval 3600``: nothing is sequenced).

The pages: Debian's Chromium (``/usr/bin/chromium``, headless, driven by playwright; never a
downloaded browser) loads each page in one browser context and waits for
``body[data-ready=yes]``, which the page sets once everything it shows is fetched and
verified. A page's time is ``performance.now()`` then: from the start of the navigation to
the page being done, module loading and every verification in the browser included. The
Receipts page is loaded with a request id in its address (one receipt, looked up and
verified step by step), and with a consumer and a job (a page of 20 receipts listed). The
samples are read from the log's entry at the middle index. With ``--statements`` (the billing
run's documents, served by the log with the same option: bench/portal.py writes them under
``runs/`` beside the data dir, and they are used from there when the option is left out) the
Creator page (that receipt's creator: provisional usage and statements, each verified) and
the Buyer page (that receipt's job: a page of receipts, each verified) are timed too. Each
page is loaded ``--warmup`` times untimed, then ``--rounds`` times.

The floor, measured in the same run, interleaved with the pages: the same browser
navigating to ``/healthz`` (one round trip to the same server, a small JSON document
rendered) and reading ``performance.now()`` the same way.

``--json`` prints one JSON object per line on stdout, exactly ``{"metric", "value", "unit",
"floor", "ratio"}``: ``portal_<page>_p50_ms`` and ``_p95_ms`` (floor: the floor's p50 or
p95; ratio: page / floor), and ``portal_<page>_p95_vs_target`` (floor: 300 ms, the issue's
target; ratio below 1.0 meets it). Notes go to stderr. Run:
``.venv/bin/python bench/portal_browser.py --data-dir .bench/portal/log-1000000/data [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright
from report import Report  # bench/report.py, beside this script
from verify import BenchError, serve  # bench/verify.py: a built log served on loopback

CHROMIUM = "/usr/bin/chromium"
TARGET_MS = 300.0


def copy_data_dir(source: Path, target: Path) -> str:
    """Copy a log's data dir (keys, and the database through SQLite's backup); its origin."""
    target.mkdir(parents=True)
    for name in ("log.key", "log.vkey", "operator.key", "operator.token"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
            (target / name).chmod(0o600)
    original = sqlite3.connect(f"file:{source / 'log.db'}?mode=ro", uri=True)
    copy = sqlite3.connect(target / "log.db")
    try:
        original.backup(copy)
    finally:
        copy.close()
        original.close()
    return (target / "log.vkey").read_text(encoding="utf-8").split("+", 1)[0]


def pages(url: str, billed: bool) -> dict[str, str]:
    """Each timed page's address, with samples from the receipt at the log's middle index."""
    size = httpx.get(f"{url}/healthz", timeout=10).json()["tree_size"]
    for index in range(size // 2, size):
        answer = httpx.get(f"{url}/v1/entries", params={"start": index, "end": index + 1})
        entry = json.loads(answer.json()["entries"][0]["entry"])
        if entry["kind"] == "receipt" and "job_id" in entry:
            break
    else:
        raise BenchError("no receipt with a job in the second half of the log")
    portal = f"{url}/portal/"
    return {
        "log": portal,
        "receipt_by_request": f"{portal}receipt.html?by=request&q={entry['request_id']}",
        "receipt_by_consumer": f"{portal}receipt.html?by=consumer&q={entry['consumer_id']}",
        "receipt_by_job": f"{portal}receipt.html?by=job&q={entry['job_id']}",
        "auditor": f"{portal}auditor.html",
    } | (
        {
            "creator": f"{portal}creator.html?creator={entry['creator_id']}",
            "buyer": f"{portal}buyer.html?job={entry['job_id']}",
        }
        if billed
        else {}
    )


def load_ms(page: Page, address: str, ready: str) -> float:
    page.goto(address)
    page.wait_for_selector(ready, timeout=60_000, state="attached")
    return float(page.evaluate("performance.now()"))


def p95(samples: Sequence[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def measure(url: str, rounds: int, warmup: int, billed: bool, out: Report) -> None:
    addresses = pages(url, billed)
    times: dict[str, list[float]] = {name: [] for name in [*addresses, "floor"]}
    floor_address = f"{url}/healthz"
    args = ["--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_context().new_page()
        failed: list[str] = []
        page.on("pageerror", lambda exc: failed.append(str(exc)))
        for round_number in range(warmup + rounds):
            for name, address in addresses.items():
                ms = load_ms(page, address, "body[data-ready=yes]")
                if round_number >= warmup:
                    times[name].append(ms)
            ms = load_ms(page, floor_address, "body")
            if round_number >= warmup:
                times["floor"].append(ms)
        page.goto(addresses["receipt_by_request"])
        page.wait_for_selector("#verification .verdict")
        out.note(f"receipt_by_request: {page.inner_text('#verification .verdict')}")
        browser.close()
    if failed:
        raise BenchError(f"JavaScript errors in the pages: {failed[:3]}")
    floor50, floor95 = statistics.median(times["floor"]), p95(times["floor"])
    out.note(f"floor (navigation to /healthz): p50 {floor50:.0f} ms, p95 {floor95:.0f} ms")
    for name in addresses:
        p50, high = statistics.median(times[name]), p95(times[name])
        out.metric(
            f"portal_{name}_p50_ms", round(p50, 1), "ms", floor=round(floor50, 1),
            ratio=round(p50 / floor50, 2),
            line=f"{name:20s} p50 {p50:6.0f} ms ({p50 / floor50:4.1f}x the floor)",
        )  # fmt: skip
        out.metric(
            f"portal_{name}_p95_ms", round(high, 1), "ms", floor=round(floor95, 1),
            ratio=round(high / floor95, 2),
            line=f"{name:20s} p95 {high:6.0f} ms ({high / floor95:4.1f}x the floor)",
        )  # fmt: skip
        out.metric(
            f"portal_{name}_p95_vs_target", round(high, 1), "ms", floor=TARGET_MS,
            ratio=round(high / TARGET_MS, 2),
            line=f"{name:20s} p95 {high:6.0f} ms = {high / TARGET_MS:4.2f} of the 300 ms target",
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="an existing log's data dir")
    parser.add_argument(
        "--statements", type=Path, help="the billing run's documents (default: ../runs if any)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed loads of each page")
    parser.add_argument("--warmup", type=int, default=3, help="untimed loads of each page first")
    parser.add_argument("--json", action="store_true", help="one JSON object per metric")
    args = parser.parse_args(argv)
    out = Report(args.json)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="meterlog-portal-bench-") as scratch:
        data_dir = Path(scratch) / "data"
        origin = copy_data_dir(args.data_dir, data_dir)
        statements = args.statements
        if statements is None and (args.data_dir.parent / "runs").is_dir():
            statements = args.data_dir.parent / "runs"
        extra = [] if statements is None else ["--statements", str(statements)]
        process, url = serve(data_dir, Path(scratch) / "serve.log", origin, extra)
        try:
            size = httpx.get(f"{url}/healthz", timeout=10).json()["tree_size"]
            out.note(
                f"log {origin}: {size:,} entries, served at {url}; {os.getloadavg()[0]:.1f} load"
            )
            measure(url, args.rounds, args.warmup, statements is not None, out)
        except BenchError as exc:
            print(f"portal_browser: {exc}", file=sys.stderr)
            return 1
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
