"""What-if simulation throughput (a script, not a test): how long a day takes to replay.

    .venv/bin/python bench/bench_simulate.py                 # a 100,000-call day
    .venv/bin/python bench/bench_simulate.py --calls 20000   # a smaller day
    .venv/bin/python bench/bench_simulate.py --profile       # cProfile, top functions

The day: 12 hours (08:00-20:00) of Poisson arrivals, exponential handle times (mean
3 min) and patience (mean 4 min), half the callers would take a callback, and enough
agents for ~98 % occupancy, so the queue overflows now and then and callbacks, retries
and abandonment all happen. Printed: generation time, simulation wall time, events,
events per second, the engine's share of the time (when profiling).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from datetime import date
from pathlib import Path

from ivr.sim.arrivals import Distribution, Generator
from ivr.sim.model import Simulation, resolve_accepts
from ivr.sim.report import Figures
from ivr.sim.scenarios import Base, SimParams

REPO = Path(__file__).resolve().parent.parent
HANDLE = 180.0
HOURS = 12

CONFIG = f"""
region: US
ari: {{password: bench}}
prompts: {{dir: {REPO / "prompts"}}}
outbound: {{dial: "PJSIP/{{number}}@carrier"}}
queues:
  support:
    did: "5550100"
    max_waiting: 100
    max_ewt: 30s
    wrap_up: 0s
agents:
  alice: {{endpoint: PJSIP/alice, queues: [support]}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rate = args.calls / HOURS
    agents = round(rate * HANDLE / 3600 / 1.01)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(CONFIG)
        base = Base(path)
    scenario = base.build("bench", [("sim.agents", f"8-20:{agents}")], SimParams())

    t0 = time.perf_counter()
    calls = Generator("support", date(2024, 5, 6), [0.0] * 8 + [rate] * HOURS + [0.0] * 4,
                      Distribution("exp", HANDLE), Distribution("exp", 240.0), 0.5,
                      args.seed).generate()
    accepts = resolve_accepts(calls, 0.5, args.seed)
    generated = time.perf_counter() - t0

    sim = Simulation(scenario, calls, accepts, seed=args.seed)
    profiler = cProfile.Profile() if args.profile else None
    t1 = time.perf_counter()
    c1 = time.process_time()
    if profiler is not None:
        profiler.enable()
    result = sim.run()
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - t1
    cpu = time.process_time() - c1
    f = Figures.of(result)
    print(f"calls                 {len(calls)}")
    print(f"agents                {agents} (08:00-20:00)")
    print(f"generation            {generated:.2f} s")
    print(f"simulation            {wall:.2f} s wall, {cpu:.2f} s CPU  ({result.events} "
          f"events, {result.events / cpu:,.0f} events/CPU-s)")
    print(f"outcome               abandoned {100 * f.abandon_rate:.1f} %, callbacks "
          f"{f.accepted}, occupancy {100 * f.occupancy:.1f} %, live wait avg "
          f"{f.live_wait_avg:.0f} s")
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        print(out.getvalue())
        engine = sum(v[2] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                     if "ivr/domain" in k[0])
        sim_own = sum(v[2] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                      if "ivr/sim" in k[0])
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"own time in ivr/domain {engine:.2f} s, ivr/sim {sim_own:.2f} s, "
              f"of {total:.2f} s profiled")


if __name__ == "__main__":
    main()
