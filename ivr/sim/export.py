"""The store's history as an arrivals CSV (``ivr export-arrivals``).

Reads the SQLite store (``ivr/store.py``'s tables ``items`` and ``history``) read-only
with ``sqlite3`` (``mode=ro``: never a write, safe beside a running service). Per live
caller (an item whose history starts with ``arrived``):

- ``time``: its original arrival (``items.arrived_at``); ``queue``.
- ``accepts_callback``: ``yes`` if it converted to a callback (``converted_to_callback``),
  ``no`` if it heard an offer (``callback_offered``) and did not, empty when it never
  heard one (unknown: ``ivr simulate`` draws it, see ``--unknown-accept``).
- ``patience``: for a caller who hung up while waiting (``abandoned``), the seconds from
  arrival to the hang-up. Empty otherwise: a caller who was answered or took a callback
  never showed how long they would have waited (the simulation treats them as never
  hanging up, which is optimistic for scenarios that make them wait longer).
- ``handle_time``: NOT in the store (it records the queue, not the conversation).
  Empty, or ``--handle-time`` for every row; ``ivr simulate --handle-time`` fills empty
  cells.

Callbacks requested through the API or the website (no live caller) are left out: the
simulation replays callers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ivr.sim.arrivals import Arrival

_EVENTS = ("arrived", "callback_offered", "converted_to_callback", "abandoned",
           "callback_requested", "callback_scheduled")


class ExportError(Exception):
    pass


@dataclass
class ExportStats:
    callers: int = 0
    skipped_requests: int = 0  # callbacks booked through the API (no caller)


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"no store at {p}")
    uri = f"file:{quote(str(p.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("SELECT 1 FROM items LIMIT 1").fetchall()
        conn.execute("SELECT 1 FROM history LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise ExportError(f"cannot read the store {p}: {exc}") from None
    return conn


def read_arrivals(conn: sqlite3.Connection, *, since: float | None = None,
                  until: float | None = None, handle_time: float | None = None,
                  stats: ExportStats | None = None) -> Iterator[Arrival]:
    """Callers in arrival order (``arrived_at``, ``seq``)."""
    stats = stats if stats is not None else ExportStats()
    lo = since if since is not None else float("-inf")
    hi = until if until is not None else float("inf")
    marks = ", ".join("?" * len(_EVENTS))
    cur = conn.execute(
        "SELECT i.id, i.queue, i.arrived_at, h.at, h.event FROM items i "
        "LEFT JOIN history h ON h.item_id = i.id AND h.event IN (" + marks + ") "
        "WHERE i.arrived_at >= ? AND i.arrived_at < ? "
        "ORDER BY i.arrived_at, i.seq, i.id, h.idx",
        (*_EVENTS, lo, hi),
    )
    current: str | None = None
    row_queue = ""
    arrived_at = 0.0
    events: dict[str, float] = {}

    def emit() -> Arrival | None:
        if "arrived" not in events:
            stats.skipped_requests += 1
            return None
        stats.callers += 1
        accepts: bool | None = None
        if "converted_to_callback" in events:
            accepts = True
        elif "callback_offered" in events:
            accepts = False
        patience = float("inf")
        if "abandoned" in events:
            patience = max(0.0, events["abandoned"] - arrived_at)
        return Arrival(arrived_at, row_queue, patience, accepts, handle_time)

    for item_id, queue, at_item, at, event in cur:
        if item_id != current:
            if current is not None and (a := emit()) is not None:
                yield a
            current, row_queue, arrived_at, events = item_id, queue, at_item, {}
        if event is not None:
            events.setdefault(event, at)
    if current is not None and (a := emit()) is not None:
        yield a
