"""Scenario results side by side: figures, a Markdown table, a PNG chart.

Definitions (also in the README's "Tuning the thresholds"):

- *offered*: callers who heard at least one callback offer; *accepted*: of those, the
  callers who took it.
- *abandoned*: live callers who hung up before an agent answered, as a share of calls.
- *live wait*: arrival -> an agent answers, for callers answered live.
- *callback time to agent*: the caller's original arrival -> the customer talking to
  an agent on the callback (it includes the time the callback waited in the queue and
  the failed attempts).
- *service level*: calls answered live within the threshold, as a share of ALL calls
  (abandoned and converted callers count as not answered in time).
- *occupancy*: agent time ringing, dialling, talking or in wrap-up over agent time on
  duty (not "not ready").
- *EWT error*: mean |predicted - actual| wait over every dequeued call (live and
  callback), the prediction being the engine's estimator's at the call's arrival.
- p90: the nearest-rank 90th percentile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ivr.sim.model import Result


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def share(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


@dataclass(frozen=True)
class Figures:
    """One scenario's metrics (plain numbers, for tables, charts and tests)."""

    name: str
    calls: int
    offered: int
    accepted: int
    accept_rate: float
    abandoned: int
    abandon_rate: float
    live_answered: int
    live_wait_avg: float
    live_wait_p90: float
    callbacks_done: int
    callbacks_failed: int
    callback_wait_avg: float
    callback_wait_p90: float
    open_at_end: int
    dial_attempts: int
    service_level: float
    service_level_threshold: float
    occupancy: float
    ewt_error: float

    @classmethod
    def of(cls, r: Result) -> Figures:
        return cls(
            name=r.scenario,
            calls=r.arrivals,
            offered=r.offered,
            accepted=r.accepted,
            accept_rate=share(r.accepted, r.offered),
            abandoned=r.abandoned,
            abandon_rate=share(r.abandoned, r.arrivals),
            live_answered=r.live_answered,
            live_wait_avg=mean(r.live_waits),
            live_wait_p90=percentile(r.live_waits, 90),
            callbacks_done=r.callbacks_done,
            callbacks_failed=r.callbacks_failed,
            callback_wait_avg=mean(r.callback_waits),
            callback_wait_p90=percentile(r.callback_waits, 90),
            open_at_end=r.open_at_end,
            dial_attempts=r.dial_attempts,
            service_level=share(r.answered_within_sl, r.arrivals),
            service_level_threshold=r.service_level_threshold,
            occupancy=share(r.occupied, r.on_duty),
            ewt_error=mean(r.ewt_errors),
        )


def fmt_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f} %"


def _count_pct(n: int, x: float) -> str:
    return f"{n} ({fmt_pct(x)})" if not math.isnan(x) else str(n)


Row = tuple[str, Callable[[Figures], str]]


def rows(threshold: float) -> list[Row]:
    return [
        ("Calls", lambda f: str(f.calls)),
        ("Offered a callback", lambda f: _count_pct(f.offered, share(f.offered, f.calls))),
        ("Accepted callbacks (of offered)", lambda f: _count_pct(f.accepted, f.accept_rate)),
        ("Abandoned", lambda f: _count_pct(f.abandoned, f.abandon_rate)),
        ("Answered live", lambda f: str(f.live_answered)),
        ("Live wait avg", lambda f: fmt_duration(f.live_wait_avg)),
        ("Live wait p90", lambda f: fmt_duration(f.live_wait_p90)),
        ("Callbacks connected", lambda f: str(f.callbacks_done)),
        ("Callbacks failed (max_attempts)", lambda f: str(f.callbacks_failed)),
        ("Callback time to agent avg", lambda f: fmt_duration(f.callback_wait_avg)),
        ("Callback time to agent p90", lambda f: fmt_duration(f.callback_wait_p90)),
        ("Dial attempts", lambda f: str(f.dial_attempts)),
        ("Still open at the end", lambda f: str(f.open_at_end)),
        (f"Service level (live ≤ {threshold:g} s, of all calls)",
         lambda f: fmt_pct(f.service_level)),
        ("Agent occupancy", lambda f: fmt_pct(f.occupancy)),
        ("EWT error (mean |predicted - actual|)", lambda f: fmt_duration(f.ewt_error)),
    ]


def markdown(figures: Sequence[Figures]) -> str:
    threshold = figures[0].service_level_threshold if figures else 20.0
    head = "| | " + " | ".join(_cell(f.name) for f in figures) + " |"
    sep = "|---|" + "---:|" * len(figures)
    lines = [head, sep]
    for label, cell in rows(threshold):
        lines.append(f"| {_cell(label)} | " + " | ".join(cell(f) for f in figures) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def chart(figures: Sequence[Figures], path: str | Path, title: str = "") -> None:
    """Four panels, scenarios side by side. Needs matplotlib (``pip install
    'ivr[simulate]'``); imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f.name for f in figures]
    x = list(range(len(figures)))

    def pct(values: Sequence[float]) -> list[float]:
        return [0.0 if math.isnan(v) else 100 * v for v in values]

    def minutes(values: Sequence[float]) -> list[float]:
        return [0.0 if math.isnan(v) else v / 60 for v in values]

    def bars(ax: object, series: Sequence[tuple[str, list[float]]], ylabel: str,
             heading: str) -> None:
        from matplotlib.axes import Axes

        assert isinstance(ax, Axes)
        width = 0.8 / len(series)
        for k, (label, values) in enumerate(series):
            offset = (k - (len(series) - 1) / 2) * width
            drawn = ax.bar([i + offset for i in x], values, width, label=label)
            ax.bar_label(drawn, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(heading, fontsize=10)
        if len(series) > 1:
            ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    threshold = figures[0].service_level_threshold if figures else 20.0
    bars(axes[0][0], [
        ("abandoned", pct([f.abandon_rate for f in figures])),
        ("took a callback", pct([share(f.accepted, f.calls) for f in figures])),
        (f"answered ≤ {threshold:g} s", pct([f.service_level for f in figures])),
    ], "% of calls", "Outcomes")
    bars(axes[0][1], [
        ("live avg", minutes([f.live_wait_avg for f in figures])),
        ("live p90", minutes([f.live_wait_p90 for f in figures])),
        ("callback avg", minutes([f.callback_wait_avg for f in figures])),
        ("callback p90", minutes([f.callback_wait_p90 for f in figures])),
    ], "minutes", "Wait to an agent")
    bars(axes[1][0], [("occupancy", pct([f.occupancy for f in figures]))],
         "% of time on duty", "Agent occupancy")
    bars(axes[1][1], [("EWT error", [0.0 if math.isnan(f.ewt_error) else f.ewt_error
                                     for f in figures])],
         "seconds", "EWT error (mean |predicted - actual|)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
