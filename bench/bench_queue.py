"""Queue engine and store throughput (a script, not a test).

    .venv/bin/python bench/bench_queue.py            # everything
    .venv/bin/python bench/bench_queue.py --engine   # engine only
    .venv/bin/python bench/bench_queue.py --store    # durable writes only

Engine figures are per queue size, each size in a fresh subprocess so the RSS figure
is that size's and not the leftovers of the previous one. Durable writes go to a
temporary directory on the same filesystem as the working directory (fsync cost
depends on the disk: run it where the database will live).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ivr.domain import FakeClock, Kind, QueueEngine, QueuePolicy
from ivr.store import SqliteStore

SIZES = (1_000, 10_000, 100_000)
SAVER_COUNTS = (1, 10, 50, 200)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_engine(n: int) -> dict[str, float]:
    rng = random.Random(n)
    base_rss = rss_mb()
    clock = FakeClock()
    engine = QueueEngine([QueuePolicy("q")], clock)

    t0 = time.perf_counter()
    items = []
    for i in range(n):
        clock.advance(0.001)
        items.append(engine.arrive("q", channel_id=f"chan-{i}", number=f"0201{i:07d}"))
        if i % 1000 == 999:
            engine.drain_changes()  # the app drains after each change; keep dirty set small
    enqueue = rate(n, time.perf_counter() - t0)
    engine.drain_changes()
    rss_full = rss_mb()

    probes = [rng.choice(items).id for _ in range(min(n, 20_000))]
    t0 = time.perf_counter()
    for item_id in probes:
        engine.position(item_id)
    position = rate(len(probes), time.perf_counter() - t0)

    converting = rng.sample(items, n // 2)  # random places, not just the tail
    t0 = time.perf_counter()
    for item in converting:
        engine.convert_to_callback(item.id, item.number or "")
    convert = rate(len(converting), time.perf_counter() - t0)
    engine.drain_changes()

    # A burst: 50 free agents in one dispatch call (R11 across many agents), then the
    # offers complete.
    agents = {f"agent-{k}": ["q"] for k in range(50)}
    calls = min(20, engine.waiting_count("q") // 100)
    t0 = time.perf_counter()
    for _ in range(calls):
        for agent, item in engine.dispatch(agents):
            if item.kind is Kind.INBOUND:
                engine.connected(item.id, agent)
            else:
                engine.dial_started(item.id, agent)
                engine.callback_connected(item.id)
    burst = rate(calls, time.perf_counter() - t0)

    # Dispatch one free agent at a time and complete the work, as agents free up.
    rounds = min(engine.waiting_count("q"), 10_000)
    t0 = time.perf_counter()
    dispatched = 0
    dispatch_time = 0.0
    for r in range(rounds):
        d0 = time.perf_counter()
        offers = engine.dispatch({f"agent-{r % 50}": ["q"]})
        dispatch_time += time.perf_counter() - d0
        for agent, item in offers:
            dispatched += 1
            if item.kind is Kind.INBOUND:
                engine.connected(item.id, agent)
            else:
                engine.dial_started(item.id, agent)
                engine.callback_connected(item.id)
        if r % 1000 == 999:
            engine.drain_changes()
    cycle = rate(rounds, time.perf_counter() - t0)
    dispatch = rate(rounds, dispatch_time)

    return {
        "n": n,
        "enqueue_per_s": enqueue,
        "position_per_s": position,
        "convert_per_s": convert,
        "dispatch_per_s": dispatch,
        "dispatch_and_complete_per_s": cycle,
        "dispatch_50_agents_calls_per_s": burst,
        "rss_mb": rss_full,
        "rss_growth_mb": rss_full - base_rss,
        "dispatched": dispatched,
    }


async def bench_store(savers: int, seconds: float, directory: Path) -> dict[str, float]:
    store = await SqliteStore.open(directory / f"bench-{savers}.db")
    clock = FakeClock()
    engine = QueueEngine([QueuePolicy("q")], clock)
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds
    counter = 0

    async def saver() -> None:
        nonlocal done, counter
        while time.perf_counter() < deadline:
            counter += 1
            clock.advance(0.001)
            engine.add_callback("q", f"07{counter:09d}")
            t0 = time.perf_counter()
            await store.save(engine.drain_changes())
            latencies.append(time.perf_counter() - t0)
            done += 1

    commits0 = store.commits
    t0 = time.perf_counter()
    await asyncio.gather(*(saver() for _ in range(savers)))
    elapsed = time.perf_counter() - t0
    commits = store.commits - commits0
    await store.close()
    latencies.sort()
    return {
        "savers": savers,
        "writes_per_s": rate(done, elapsed),
        "commits_per_s": rate(commits, elapsed),
        "per_commit": done / commits if commits else 0.0,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def run_engine() -> None:
    print("engine (one queue; ops per second; RSS of a fresh process holding n items)")
    header = (
        f"{'n':>8} {'enqueue':>10} {'position':>10} {'convert':>10} {'dispatch':>10} "
        f"{'disp+done':>10} {'50-agent':>9} {'RSS MB':>8} {'growth':>8}"
    )
    print(header)
    for n in SIZES:
        out = subprocess.run(
            [sys.executable, __file__, "--one-size", str(n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out)
        print(
            f"{n:>8} {r['enqueue_per_s']:>10,.0f} {r['position_per_s']:>10,.0f} "
            f"{r['convert_per_s']:>10,.0f} {r['dispatch_per_s']:>10,.0f} "
            f"{r['dispatch_and_complete_per_s']:>10,.0f} "
            f"{r['dispatch_50_agents_calls_per_s']:>9,.0f} "
            f"{r['rss_mb']:>8.1f} {r['rss_growth_mb']:>8.1f}"
        )


def run_store(seconds: float) -> None:
    print(f"durable callback writes (SqliteStore, WAL, synchronous=FULL, {seconds:g} s each)")
    print(f"{'savers':>7} {'writes/s':>10} {'commits/s':>10} {'per commit':>11} "
          f"{'p50 ms':>8} {'p99 ms':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        for savers in SAVER_COUNTS:
            r = asyncio.run(bench_store(savers, seconds, Path(tmp)))
            print(
                f"{savers:>7} {r['writes_per_s']:>10,.0f} {r['commits_per_s']:>10,.0f} "
                f"{r['per_commit']:>11.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--engine", action="store_true")
    parser.add_argument("--store", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_size:
        print(json.dumps(bench_engine(args.one_size)))
        return
    both = not (args.engine or args.store)
    if args.engine or both:
        run_engine()
    if args.store or both:
        run_store(args.seconds)


if __name__ == "__main__":
    main()
