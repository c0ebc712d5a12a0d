"""Business hours (SPEC R14): when a queue's callbacks may be dialled and until when
offers are made. Pure: a timestamp in, an answer out; the zone comes from config.

The words operators write are parsed here too (``mon-fri``, ``fri-mon``, ``08:00-18:00``,
``…-24:00``), so config only adds the key and the line to an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# End of a range written as 24:00 (open until midnight).
END_OF_DAY = time.max

DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")

Range = tuple[time, time]


@dataclass(frozen=True)
class BusinessHours:
    timezone: str
    days: Mapping[int, tuple[Range, ...]]
    """weekday (0 = Monday) -> opening ranges, sorted and merged; an end of
    ``END_OF_DAY`` means open until midnight. A day not listed is closed."""

    def _local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, ZoneInfo(self.timezone))

    def _range_at(self, weekday: int, t: time) -> Range | None:
        for a, b in self.days.get(weekday, ()):
            if a <= t and (t < b or b == END_OF_DAY):
                return a, b
        return None

    def is_open(self, now: float) -> bool:
        local = self._local(now)
        return self._range_at(local.weekday(), local.time()) is not None

    def seconds_to_close(self, now: float) -> float:
        """Seconds until the current opening ends (0 when closed). A range open until
        midnight continues into the next day's range that starts at 00:00."""
        local = self._local(now)
        found = self._range_at(local.weekday(), local.time())
        if found is None:
            return 0.0
        day, end = local.date(), found[1]
        for _ in range(7):
            if end != END_OF_DAY:
                break
            nxt = day + timedelta(days=1)
            cont = [b for a, b in self.days.get(nxt.weekday(), ()) if a == time(0)]
            if not cont:
                break
            day, end = nxt, cont[0]
        zone = ZoneInfo(self.timezone)
        if end == END_OF_DAY:
            close = datetime.combine(day + timedelta(days=1), time(0), zone)
        else:
            close = datetime.combine(day, end, zone)
        # Via timestamps: aware datetimes in one zone subtract as wall clock (DST).
        return max(0.0, close.timestamp() - now)


def check_timezone(name: str) -> None:
    """ValueError unless ``name`` is a time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (use e.g. America/New_York)") from None


def parse_days(spec: str) -> list[int]:
    """``mon``, ``mon-fri``, or a range that wraps past Sunday: ``fri-mon`` is fri, sat,
    sun, mon; ``mon-mon`` is Monday only."""
    text = spec.lower()
    if "-" in text:
        a, _, b = text.partition("-")
        if a not in DAYS or b not in DAYS:
            raise ValueError("day range must look like mon-fri (or fri-mon)")
        first, last = DAYS[a], DAYS[b]
        return [(first + i) % 7 for i in range((last - first) % 7 + 1)]
    if text in DAYS:
        return [DAYS[text]]
    raise ValueError("unknown day (use mon..sun or a range like mon-fri)")


def parse_range(text: str) -> Range:
    """``08:00-18:00``; ``…-24:00`` is open until midnight."""
    m = _RANGE.match(text.replace(" ", ""))
    if not m:
        raise ValueError(f"opening hours must look like 08:00-18:00, not {text!r}")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"bad opening hours {text!r}")
    if (h2, m2) <= (h1, m1):
        raise ValueError(
            f"bad opening hours {text!r}: the end must be after the start (to stay open "
            "past midnight, end at 24:00 and start the next day at 00:00)"
        )
    return time(h1, m1), END_OF_DAY if h2 == 24 else time(h2, m2)


def merge(ranges: Iterable[Range]) -> tuple[Range, ...]:
    """Sorted, overlapping and touching ranges joined (so ``seconds_to_close`` sees
    where an opening really ends)."""
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)
