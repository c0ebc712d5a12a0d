"""``ivr simulate`` and ``ivr export-arrivals`` (wired into ``ivr/cli.py``).

Only ``argparse`` at import time: ``ivr run`` and ``ivr check-config`` do not pay for
the simulation's modules, and matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

EXIT_CONFIG = 2


def add_parsers(sub: Any) -> None:
    """``sub``: the ``add_subparsers()`` object of ``ivr``'s parser."""
    sim = sub.add_parser(
        "simulate",
        help="what-if: replay a day of calls through the queue engine (no Asterisk)",
        description="Replay arrivals (a CSV, or --generate) through the real queue engine "
                    "with simulated agents, for one or more scenarios (config overrides), "
                    "and compare them side by side.")
    sim.add_argument("config")
    sim.add_argument("arrivals", nargs="?",
                     help="arrivals CSV (time, queue, patience, accepts_callback, "
                          "handle_time); omit with --generate")
    gen = sim.add_argument_group("generated arrivals (--generate)")
    gen.add_argument("--generate", action="store_true",
                     help="generate Poisson arrivals instead of reading a CSV")
    gen.add_argument("--rate", default="8-18:120",
                     help="calls per hour by hour of day, e.g. 120 or '8-12:150;12-18:90' "
                          "(default %(default)s)")
    gen.add_argument("--handle", default="exp:5m",
                     help="handle time: fixed:MEAN, exp:MEAN, lognormal:MEAN:SIGMA "
                          "(default %(default)s)")
    gen.add_argument("--patience", default="exp:4m",
                     help="how long callers wait before hanging up: as --handle, or none "
                          "(default %(default)s)")
    gen.add_argument("--accept", type=float, default=0.5,
                     help="probability a caller takes an offered callback (default "
                          "%(default)s)")
    gen.add_argument("--date", help="the day to generate, YYYY-MM-DD (default: today)")
    sim.add_argument("--seed", type=int, default=1,
                     help="seed for generation and every random draw (default %(default)s)")
    sim.add_argument("--queue", help="queue of generated calls and of CSV rows without one "
                                     "(default: the config's first queue)")
    sim.add_argument("--save-arrivals", metavar="FILE",
                     help="write the arrivals used to FILE (CSV)")
    sc = sim.add_argument_group("scenarios")
    sc.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (dotted, e.g. queues.support.max_ewt=3m) "
                         "or a sim.* parameter, in every scenario; repeatable")
    sc.add_argument("--scenario", dest="scenarios", action="append", default=[],
                    metavar="NAME:KEY=VALUE,...",
                    help="a named scenario with its overrides; repeatable")
    sc.add_argument("--sweep", dest="sweeps", action="append", default=[],
                    metavar="KEY=V1,V2,...",
                    help="one scenario per value (several sweeps: every combination)")
    model = sim.add_argument_group("model")
    model.add_argument("--agents", metavar="PROFILE",
                       help="agents on duty by hour, e.g. 4 or '8-12:5;12-18:4' "
                            "(= --set sim.agents=...; default: the config's agents, all day)")
    model.add_argument("--answer-rate", help="probability a customer answers a callback "
                                             "attempt (= sim.answer_rate, default 0.8)")
    model.add_argument("--handle-time", help="handle time of calls without one "
                                             "(= sim.handle_time, default 5m)")
    model.add_argument("--service-level", help="service-level threshold "
                                               "(= sim.service_level, default 20s)")
    model.add_argument("--unknown-accept", type=float,
                       help="probability a caller whose row leaves accepts_callback empty "
                            "takes a callback (default: the share of yes among rows that "
                            "say)")
    out = sim.add_argument_group("output")
    out.add_argument("--report", default="simulate-report.md",
                     help="Markdown report file (default %(default)s)")
    out.add_argument("--chart", default="simulate-report.png",
                     help="PNG chart file (default %(default)s; needs matplotlib)")
    out.add_argument("--no-chart", action="store_true")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")

    exp = sub.add_parser(
        "export-arrivals",
        help="write the store's calls as an arrivals CSV for ivr simulate",
        description="Read the store (read-only) and write one CSV row per caller. "
                    "handle_time is not in the store: left empty unless --handle-time.")
    exp.add_argument("config")
    exp.add_argument("--since", help="first arrival time (ISO date or date-time; "
                                     "without an offset: the queues' time zone)")
    exp.add_argument("--until", help="arrivals before this time")
    exp.add_argument("--out", help="CSV file (default: stdout)")
    exp.add_argument("--handle-time", help="write this handle time in every row "
                                           "(default: empty)")


def run(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        return _simulate(args)
    return _export(args)


def _fail(message: str) -> int:
    print(f"ivr: {message}", file=sys.stderr)
    return EXIT_CONFIG


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.n = 0
        self.name = ""
        self.shown = -1

    def scenario(self, n: int, name: str) -> None:
        self.n, self.name, self.shown = n, name, -1

    def __call__(self, fraction: float) -> None:
        if self.quiet:
            return
        pct = int(fraction * 100)
        if self.tty and pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 5) + "." * (20 - pct // 5)
            print(f"\r[{self.n}/{self.total}] [{bar}] {pct:3d}% {self.name[:40]:<40}",
                  end="", file=sys.stderr, flush=True)

    def done(self, seconds: float, events: int) -> None:
        if self.quiet:
            return
        line = (f"[{self.n}/{self.total}] {self.name}: {events} events in "
                f"{seconds:.1f} s")
        if self.tty:
            print(f"\r{line:<80}", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _simulate(args: argparse.Namespace) -> int:
    from ivr.configdoc import ConfigError
    from ivr.sim import arrivals as arr
    from ivr.sim import report, scenarios
    from ivr.sim.model import Simulation, known_accept_rate, resolve_accepts

    try:
        base = scenarios.Base(args.config)
        cfg = base.config
        queue = args.queue or next(iter(cfg.queues))
        if queue not in cfg.queues:
            raise ConfigError(f"--queue {queue}: no such queue (the config has "
                              f"{', '.join(cfg.queues)})")
        zone_name = next((q.hours.timezone for q in cfg.queues.values() if q.hours), None)
        zone = arr.zone_of(zone_name)
        params = scenarios.SimParams()
        for option, key in (("agents", "sim.agents"), ("answer_rate", "sim.answer_rate"),
                            ("handle_time", "sim.handle_time"),
                            ("service_level", "sim.service_level")):
            value = getattr(args, option)
            if value is not None:
                params = scenarios.apply_sim(params, key, value)
        common = [scenarios.parse_assignment(s) for s in args.sets]
        named = [scenarios.parse_scenario(s) for s in args.scenarios]
        sweeps = [scenarios.parse_sweep(s) for s in args.sweeps]
        runs = scenarios.build_scenarios(base, params, common, named, sweeps)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}")
    try:
        if args.generate == (args.arrivals is not None):
            return _fail("give an arrivals CSV or --generate (one of them)")
        if args.generate:
            day = date.fromisoformat(args.date) if args.date else date.today()
            calls = arr.Generator(
                queue=queue, day=day, rates=arr.parse_profile(args.rate, "--rate"),
                handle=arr.Distribution.parse(args.handle, "--handle"),
                patience=arr.Distribution.parse(args.patience, "--patience"),
                accept=args.accept, seed=args.seed, zone=zone).generate()
            source = (f"generated: {args.rate} calls/h on {day}, handle {args.handle}, "
                      f"patience {args.patience}, accept {args.accept:g}, seed {args.seed}")
        else:
            calls = arr.read_csv(args.arrivals, default_queue=queue, queues=cfg.queues,
                                 zone=zone)
            source = f"{args.arrivals}"
    except (arr.ArrivalsError, ValueError) as exc:
        return _fail(str(exc))
    if not calls:
        return _fail("no arrivals to simulate")
    if args.save_arrivals:
        with open(args.save_arrivals, "w", newline="", encoding="utf-8") as fh:
            arr.write_csv(calls, fh)
    unknown_p = args.unknown_accept
    if unknown_p is None:
        known = known_accept_rate(calls)
        unknown_p = known if known is not None else 0.5
    if not 0.0 <= unknown_p <= 1.0:
        return _fail("--unknown-accept must be between 0 and 1")
    accepts = resolve_accepts(calls, unknown_p, args.seed)

    progress = _Progress(len(runs), args.quiet)
    results = []
    for n, scenario in enumerate(runs, 1):
        progress.scenario(n, scenario.name)
        result = Simulation(scenario, calls, accepts, seed=args.seed,
                            progress=progress).run()
        progress.done(result.wall, result.events)
        results.append(result)
    figures = [report.Figures.of(r) for r in results]
    table = report.markdown(figures)
    heading = f"What-if: {len(calls)} calls ({source})"
    print(heading + "\n")
    print(table, end="")
    text = f"# {heading}\n\n"
    for scenario in runs:
        shown = ", ".join(f"`{k}={v}`" for k, v in scenario.overrides) or "the config as is"
        text += f"- **{scenario.name}**: {shown}\n"
    text += "\n" + table
    try:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text, encoding="utf-8")
        if not args.no_chart:
            Path(args.chart).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot write {args.report}: {exc.strerror or exc}")
    print(f"\nreport: {args.report}", file=sys.stderr)
    if not args.no_chart:
        try:
            report.chart(figures, args.chart, title=heading)
        except ImportError:
            print("ivr: no chart: matplotlib is not installed (pip install 'ivr[simulate]')",
                  file=sys.stderr)
        else:
            print(f"chart: {args.chart}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ivr.configdoc import ConfigError
    from ivr.sim import arrivals as arr
    from ivr.sim import export
    from ivr.sim.scenarios import Base

    try:
        cfg = Base(args.config).config
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}")
    zone_name = next((q.hours.timezone for q in cfg.queues.values() if q.hours), None)
    zone = arr.zone_of(zone_name)
    try:
        since = arr.parse_time(args.since, zone) if args.since else None
        until = arr.parse_time(args.until, zone) if args.until else None
        handle = arr.parse_seconds(args.handle_time) if args.handle_time else None
    except ValueError as exc:
        return _fail(str(exc))
    stats = export.ExportStats()
    try:
        conn = export.connect_readonly(cfg.store_path)
    except export.ExportError as exc:
        return _fail(str(exc))
    try:
        rows = export.read_arrivals(conn, since=since, until=until, handle_time=handle,
                                    stats=stats)
        if args.out:
            with open(args.out, "w", newline="", encoding="utf-8") as fh:
                arr.write_csv(rows, fh)
        else:
            arr.write_csv(rows, sys.stdout)
    finally:
        conn.close()
    note = "" if handle is not None else (
        "; handle_time is not in the store: the column is empty (ivr simulate "
        "--handle-time fills it)")
    print(f"exported {stats.callers} callers ({stats.skipped_requests} callbacks booked "
          f"without a caller left out){note}", file=sys.stderr)
    return 0
