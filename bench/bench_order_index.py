"""The engine's OrderIndex (sortedcontainers.SortedList plus a membership set) beside a
bare SortedList, on the queue engine's workload (a script that prints figures, not a
test): what the set semantics cost.

    .venv/bin/python bench/bench_order_index.py

Measured once, 2026-11-28, before the switch: our own bucket-and-Fenwick index
(git 26dc2d0, ivr/domain/queues.py) ran 1.09 / 1.57 / 1.69 µs per operation at
1,000 / 10,000 / 100,000 items against SortedList's 0.89 / 1.77 / 1.68: as fast, so the
library replaced it. ``bench/bench_queue.py --engine`` gives the engine-level figures.

The workload is a queue's life: arrivals join the tail, dispatch takes the head, some
callers abandon from anywhere, and every offer and API read asks positions (rank). Same
operations, same seed, for each implementation and queue size; best of three runs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol

from ivr.domain.order_index import Key, OrderIndex

SIZES = (1_000, 10_000, 100_000)
OPS = 200_000


class Index(Protocol):
    def add(self, key: Key) -> object: ...
    def discard(self, key: Key) -> object: ...
    def rank(self, key: Key) -> int: ...


def sorted_list() -> Index | None:
    try:
        from sortedcontainers import SortedList
    except ImportError:
        return None

    class Adapter:
        def __init__(self) -> None:
            self.s: SortedList[Key] = SortedList()

        def add(self, key: Key) -> object:
            self.s.add(key)
            return True

        def discard(self, key: Key) -> object:
            self.s.discard(key)
            return True

        def rank(self, key: Key) -> int:
            return int(self.s.bisect_left(key))

    return Adapter()


def workload(size: int, seed: int) -> list[tuple[str, Key]]:
    rng = random.Random(seed)
    live: list[Key] = []
    ops: list[tuple[str, Key]] = []
    t = 0.0
    for seq in range(size):
        t += rng.random()
        key = (t, seq, f"{seq:032x}")
        live.append(key)
        ops.append(("add", key))
    seq = size
    while len(ops) < OPS + size:
        r = rng.random()
        if r < 0.3:  # arrival at the tail
            t += rng.random()
            key = (t, seq, f"{seq:032x}")
            seq += 1
            live.append(key)
            ops.append(("add", key))
        elif r < 0.5 and live:  # dispatch from the head
            ops.append(("discard", live.pop(0)))
        elif r < 0.6 and live:  # abandon from anywhere
            ops.append(("discard", live.pop(rng.randrange(len(live)))))
        elif live:  # position of someone
            ops.append(("rank", live[rng.randrange(len(live))]))
    return ops


def run(make: Callable[[], Index | None], ops: list[tuple[str, Key]]) -> float | None:
    best: float | None = None
    for _ in range(3):
        index = make()
        if index is None:
            return None
        add, discard, rank = index.add, index.discard, index.rank
        start = time.perf_counter()
        for op, key in ops:
            if op == "add":
                add(key)
            elif op == "discard":
                discard(key)
            else:
                rank(key)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best


def main() -> None:
    print(f"{'size':>8} {'OrderIndex µs/op':>18} {'bare SortedList':>18} {'ratio':>7}")
    for size in SIZES:
        ops = workload(size, seed=size)
        ours = run(OrderIndex, ops)
        theirs = run(sorted_list, ops)
        assert ours is not None
        n = len(ops)
        if theirs is None:
            print(f"{size:>8} {ours / n * 1e6:>18.2f} {'(not installed)':>18}")
            continue
        print(f"{size:>8} {ours / n * 1e6:>18.2f} {theirs / n * 1e6:>18.2f} "
              f"{ours / theirs:>7.2f}")


if __name__ == "__main__":
    main()
