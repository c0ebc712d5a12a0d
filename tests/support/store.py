"""What the service committed: its SQLite store, read as a second connection would."""

from __future__ import annotations

import sqlite3

from ivr.app import Service
from ivr.domain.items import WorkItem
from ivr.store import SqliteStore


def e164(number: str) -> str:
    """A test caller id (a 10-digit US number) as the service stores it (R13)."""
    return number if number.startswith("+") else "+1" + number


async def stored_item(svc: Service, number: str) -> WorkItem:
    """The caller's latest work item as committed in SQLite (a second connection), once
    the running service has committed what it holds: a caller's hang-up is committed
    lazily, with the next commit (``FlowContext.commit_soon``)."""
    if svc.ctx is not None:
        await svc.ctx.commit()
    with sqlite3.connect(svc.cfg.store_path) as db:
        row = db.execute("SELECT id FROM items WHERE number = ? ORDER BY seq DESC LIMIT 1",
                         (e164(number),)).fetchone()
    assert row is not None, f"no stored item for {number}"
    store = await SqliteStore.open(svc.cfg.store_path)
    try:
        item = await store.load(row[0])
    finally:
        await store.close()
    assert item is not None
    return item
