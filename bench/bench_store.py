"""The two store back-ends side by side (a script, not a test).

    .venv/bin/python -m bench.bench_store [--seconds 3] [--dir DIR] [--out FILE]

Durable single-item saves from 1, 10 and 100 concurrent savers (each saver: make a
callback, save it, wait for the commit, again; group commit batches what arrives while a
commit runs), then ``load_open()`` of 10,000 open items (what a restart reads).

SqliteStore: WAL, synchronous=FULL. PgStore: a throwaway PostgreSQL started here by
rig/postgres.py (fsync on, synchronous_commit on) on 127.0.0.1: no network latency, so
a remote server adds its round trips to every commit. Both keep their files under DIR
(default: the temporary directory; fsync cost depends on the disk, so the filesystem is
printed). Writes the table to bench/results/store.md unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from ivr.domain import FakeClock, QueueEngine, QueuePolicy
from ivr.pgstore import PgStore
from ivr.store import SqliteStore
from rig import postgres

REPO = Path(__file__).resolve().parent.parent

SAVER_COUNTS = (1, 10, 100)
LOAD_ITEMS = 10_000
LOAD_REPEATS = 3

AnyStore = SqliteStore | PgStore
Opener = Callable[[str], Awaitable[AnyStore]]


async def bench_saves(store: AnyStore, savers: int, seconds: float) -> dict[str, float]:
    clock = FakeClock()
    engine = QueueEngine([QueuePolicy("q")], clock)
    latencies: list[float] = []
    counter = 0
    deadline = time.perf_counter() + seconds

    async def saver() -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            counter += 1
            clock.advance(0.001)
            engine.add_callback("q", f"+1201{counter:07d}")
            t0 = time.perf_counter()
            await store.save(engine.drain_changes())
            latencies.append(time.perf_counter() - t0)

    commits0 = store.commits
    t0 = time.perf_counter()
    await asyncio.gather(*(saver() for _ in range(savers)))
    elapsed = time.perf_counter() - t0
    commits = store.commits - commits0
    latencies.sort()
    return {
        "saves_per_s": len(latencies) / elapsed,
        "per_commit": len(latencies) / commits if commits else 0.0,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def bench_load(store: AnyStore) -> dict[str, float]:
    clock = FakeClock()
    engine = QueueEngine([QueuePolicy("q")], clock)
    for i in range(LOAD_ITEMS):
        clock.advance(0.001)
        engine.arrive("q", channel_id=f"chan-{i}", number=f"+1201{i:07d}")
        if i % 1000 == 999:
            await store.save(engine.drain_changes())
    await store.save(engine.drain_changes())
    times = []
    for _ in range(LOAD_REPEATS):
        t0 = time.perf_counter()
        items = await store.load_open()
        times.append(time.perf_counter() - t0)
        assert len(items) == LOAD_ITEMS
    best = min(times)
    return {"ms": best * 1000, "items_per_s": LOAD_ITEMS / best}


async def run_backend(open_store: Opener, seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for savers in SAVER_COUNTS:
        store = await open_store(f"saves_{savers}")
        try:
            out[f"saves_{savers}"] = await bench_saves(store, savers, seconds)
        finally:
            await store.close()
    store = await open_store("load")
    try:
        out["load"] = await bench_load(store)
    finally:
        await store.close()
    return out


def machine(directory: Path, pg_version: str) -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    fs = subprocess.run(["df", "--output=fstype", str(directory)], capture_output=True,
                        text=True, check=False).stdout.split()[-1:] or ["?"]
    # Other work on the machine skews every figure: say how busy it was.
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python "
            f"{platform.python_version()}, {pg_version}; files on {fs[0]} ({directory}); "
            f"load average {load:.1f} at the end")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per saver count")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/store.md")
    args = parser.parse_args()
    started = time.monotonic()

    sqlite_dir = Path(tempfile.mkdtemp(prefix="ivr-bench-sqlite-", dir=args.dir))
    server = postgres.start(Path(tempfile.mkdtemp(prefix="ivr-bench-pg-", dir=args.dir)))
    try:
        pg_version = server.psql("SHOW server_version").split()[0]

        async def open_sqlite(name: str) -> AnyStore:
            return await SqliteStore.open(sqlite_dir / f"{name}.db")

        async def open_pg(name: str) -> AnyStore:
            return await PgStore.open(server.create_database(name))

        print("SQLite ...", flush=True)
        lite = asyncio.run(run_backend(open_sqlite, args.seconds))
        print("PostgreSQL ...", flush=True)
        pg = asyncio.run(run_backend(open_pg, args.seconds))
    finally:
        server.stop(remove=True)
        shutil.rmtree(sqlite_dir, ignore_errors=True)

    lines = [
        "# Store benchmark: SQLite and PostgreSQL side by side",
        "",
        f"Run {datetime.now():%Y-%m-%d %H:%M} by `python -m bench.bench_store` in "
        f"{time.monotonic() - started:.0f} s. Machine: "
        f"{machine(args.dir, 'PostgreSQL ' + pg_version)}.",
        "",
        f"Durable single-item saves, {args.seconds:g} s per row: each saver makes a callback, "
        "saves it and waits for the commit, over and over; group commit puts what arrives "
        "during a commit into the next transaction. SQLite: WAL, synchronous=FULL. "
        "PostgreSQL: the rig's cluster on 127.0.0.1 (fsync on, synchronous_commit on, "
        "shared_buffers 32MB); a server across a network adds its round trips to each "
        "commit.",
        "",
        "| concurrent savers | SQLite saves/s | PostgreSQL saves/s | SQLite saves per commit "
        "| PostgreSQL saves per commit | SQLite p50 / p99 ms | PostgreSQL p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for savers in SAVER_COUNTS:
        a, b = lite[f"saves_{savers}"], pg[f"saves_{savers}"]
        lines.append(
            f"| {savers} | {a['saves_per_s']:,.0f} | {b['saves_per_s']:,.0f} "
            f"| {a['per_commit']:.1f} | {b['per_commit']:.1f} "
            f"| {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} |")
    a, b = lite["load"], pg["load"]
    lines += [
        "",
        f"`load_open()` of {LOAD_ITEMS:,} open items (one history entry each; best of "
        f"{LOAD_REPEATS}): what a restart, or a standby taking over, reads before serving.",
        "",
        "| | SQLite | PostgreSQL |",
        "|---|---|---|",
        f"| ms | {a['ms']:.0f} | {b['ms']:.0f} |",
        f"| items/s | {a['items_per_s']:,.0f} | {b['items_per_s']:,.0f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
