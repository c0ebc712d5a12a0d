"""The calls a simulation replays: read from a CSV, or generated from parameters.

CSV columns (a header line; only ``time`` is required, other columns may be left out or
left empty per row):

- ``time``: when the caller arrived. ISO 8601 (``2024-05-06T08:00:03.250+00:00``; a
  time without an offset is read in the queue's business-hours time zone, else UTC) or
  epoch seconds.
- ``queue``: the config's queue name (default: the one given with ``--queue``, else the
  config's first queue).
- ``patience``: how long the caller would wait before hanging up (``95``, ``95.5``,
  ``3m``); empty: never hangs up. Or ``abandon_at``: the time they hung up (as ``time``).
- ``accepts_callback``: would they take a callback when offered (``yes``/``no``,
  ``true``/``false``, ``1``/``0``); empty: unknown, drawn with the unknown-accept
  probability (``ivr simulate --unknown-accept``, default: the share of ``yes`` among the
  rows that say).
- ``handle_time``: the conversation's length; empty: ``--handle-time``.

Generation (``--generate``): Poisson arrivals with a rate per hour of day (piecewise
constant; the hours are local to the queue's business-hours time zone, else UTC),
handle and patience times drawn from fixed / exponential / lognormal distributions, and
an accept probability, all from one seeded ``random.Random``: the same seed gives the
same calls.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

from ivr.configdoc import parse_duration

COLUMNS = ("time", "queue", "patience", "accepts_callback", "handle_time")
_KNOWN_COLUMNS = frozenset({*COLUMNS, "abandon_at"})
_TRUE = frozenset({"yes", "y", "true", "1"})
_FALSE = frozenset({"no", "n", "false", "0"})


class ArrivalsError(ValueError):
    """A bad arrivals file or generation parameter; the message says where."""


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    """Epoch seconds."""
    queue: str
    patience: float = math.inf
    """Seconds the caller waits live before hanging up; ``inf``: never."""
    accepts_callback: bool | None = None
    """Takes a callback at the first offer; ``None``: unknown (drawn at simulation)."""
    handle_time: float | None = None
    """Conversation seconds; ``None``: the simulation's default."""


# --------------------------------------------------------------------------- values


def parse_seconds(text: str) -> float:
    """``95``, ``95.5``, ``3m``, ``1h`` -> seconds."""
    return parse_duration(text.strip())


def parse_bool(text: str) -> bool | None:
    value = text.strip().lower()
    if not value:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not yes/no: {text!r}")


def parse_time(text: str, zone: tzinfo) -> float:
    """ISO 8601 (naive: in ``zone``) or epoch seconds -> epoch seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 or epoch seconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.timestamp()


def format_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def format_seconds(value: float | None) -> str:
    if value is None or math.isinf(value):
        return ""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def zone_of(name: str | None) -> tzinfo:
    return ZoneInfo(name) if name else UTC


# --------------------------------------------------------------------------- CSV


def read_csv(path: str | Path, *, default_queue: str, queues: Iterable[str],
             zone: tzinfo = UTC) -> list[Arrival]:
    """Arrivals in file order, sorted by time (stable). Raises ``ArrivalsError`` naming
    the file, line and column."""
    known = set(queues)
    out: list[Arrival] = []
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ArrivalsError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "time" not in header:
            raise ArrivalsError(f"{path}: the header must name a time column "
                                f"(columns: {', '.join(COLUMNS)})")
        unknown = [h for h in header if h and h not in _KNOWN_COLUMNS]
        if unknown:
            raise ArrivalsError(f"{path}: unknown column {unknown[0]!r} "
                                f"(columns: {', '.join(COLUMNS)}, abandon_at)")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            column = "time"
            try:
                at = parse_time(row.get("time") or "", zone)
                column = "queue"
                queue = (row.get("queue") or "").strip() or default_queue
                if queue not in known:
                    raise ValueError(f"unknown queue {queue!r} (the config has "
                                     f"{', '.join(sorted(known))})")
                column = "patience"
                patience = math.inf
                if (row.get("patience") or "").strip():
                    patience = parse_seconds(row["patience"])
                column = "abandon_at"
                if (row.get("abandon_at") or "").strip():
                    patience = max(0.0, parse_time(row["abandon_at"], zone) - at)
                column = "accepts_callback"
                accepts = parse_bool(row.get("accepts_callback") or "")
                column = "handle_time"
                handle_time = None
                if (row.get("handle_time") or "").strip():
                    handle_time = parse_seconds(row["handle_time"])
            except ValueError as exc:
                raise ArrivalsError(f"{path} line {line}, {column}: {exc}") from None
            out.append(Arrival(at, queue, patience, accepts, handle_time))
    out.sort(key=lambda a: a.at)
    return out


def write_csv(arrivals: Iterable[Arrival], out: IO[str]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for a in arrivals:
        accepts = "" if a.accepts_callback is None else ("yes" if a.accepts_callback else "no")
        writer.writerow([format_time(a.at), a.queue, format_seconds(a.patience), accepts,
                         format_seconds(a.handle_time)])
        n += 1
    return n


# --------------------------------------------------------------------------- generation


def parse_profile(text: str, what: str = "profile") -> list[float]:
    """24 values, one per hour of day. ``120`` (all day), or ranges ``8-12:120;12-14:80``
    (end hour exclusive, 0-24; hours not listed are 0)."""
    spec = text.strip()
    try:
        value = float(spec)
    except ValueError:
        pass
    else:
        if value < 0 or not math.isfinite(value):
            raise ArrivalsError(f"{what}: must be >= 0, not {text!r}")
        return [value] * 24
    hours = [0.0] * 24
    for part in spec.split(";"):
        span, sep, amount = part.strip().partition(":")
        first, dash, last = span.partition("-")
        try:
            if not sep or not dash:
                raise ValueError
            a, b, v = int(first), int(last), float(amount)
        except ValueError:
            raise ArrivalsError(f"{what}: {part.strip()!r} is not HH-HH:VALUE "
                                "(e.g. 8-12:120;12-14:80)") from None
        if not 0 <= a < b <= 24 or v < 0 or not math.isfinite(v):
            raise ArrivalsError(f"{what}: {part.strip()!r}: hours 0-24, start before end, "
                                "value >= 0")
        for h in range(a, b):
            hours[h] = v
    return hours


@dataclass(frozen=True)
class Distribution:
    """``fixed:MEAN``, ``exp:MEAN``, ``lognormal:MEAN:SIGMA`` (sigma of the log) or
    ``none`` (infinite: a caller who never hangs up). MEAN is a duration (``5m``)."""

    kind: str
    mean: float = math.inf
    sigma: float = 0.0

    @classmethod
    def parse(cls, text: str, what: str) -> Distribution:
        parts = text.strip().split(":")
        kind = parts[0].lower()
        try:
            if kind == "none" and len(parts) == 1:
                return cls("none")
            if kind in ("fixed", "exp") and len(parts) == 2:
                dist = cls(kind, parse_seconds(parts[1]))
            elif kind == "lognormal" and len(parts) == 3:
                dist = cls(kind, parse_seconds(parts[1]), float(parts[2]))
            else:
                raise ValueError
        except ValueError:
            raise ArrivalsError(f"{what}: {text!r} is not fixed:MEAN, exp:MEAN, "
                                "lognormal:MEAN:SIGMA or none") from None
        if dist.mean <= 0 or dist.sigma < 0 or not math.isfinite(dist.sigma):
            raise ArrivalsError(f"{what}: {text!r}: the mean must be > 0, sigma >= 0")
        return dist

    def draw(self, rng: random.Random) -> float:
        if self.kind == "none":
            return math.inf
        if self.kind == "fixed":
            return self.mean
        if self.kind == "exp":
            return rng.expovariate(1.0 / self.mean)
        mu = math.log(self.mean) - self.sigma * self.sigma / 2  # so that E[X] = mean
        return rng.lognormvariate(mu, self.sigma)


@dataclass(frozen=True)
class Generator:
    queue: str
    day: date
    rates: Sequence[float]
    """Calls per hour, per hour of day (24 values)."""
    handle: Distribution
    patience: Distribution
    accept: float
    """Probability a caller takes a callback when offered."""
    seed: int
    zone: tzinfo = UTC

    def generate(self) -> list[Arrival]:
        if not 0.0 <= self.accept <= 1.0:
            raise ArrivalsError(f"accept probability must be in [0, 1], not {self.accept}")
        rng = random.Random(self.seed)
        out: list[Arrival] = []
        for hour, rate in enumerate(self.rates):
            if rate <= 0:
                continue
            start = datetime.combine(self.day, time(hour), self.zone).timestamp()
            end = (datetime.combine(self.day, time(0), self.zone)
                   + timedelta(hours=hour + 1)).timestamp()
            t = start
            while True:
                t += rng.expovariate(rate / 3600.0)
                if t >= end:
                    break
                patience = self.patience.draw(rng)
                accepts = rng.random() < self.accept
                handle = self.handle.draw(rng)
                out.append(Arrival(t, self.queue, patience, accepts, handle))
        return out
