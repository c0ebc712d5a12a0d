"""The store, both back-ends (SqliteStore, PgStore): round trip, append-only history,
group commit, barriers, failures. SQLite's own concerns (pragmas, file modes, probe of
paths, query plans) follow, SQLite only; PostgreSQL's own are in test_pgstore.py."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from ivr.domain import FakeClock, QueueEngine, QueuePolicy, State
from ivr.pgstore import PgStore
from ivr.store import MIGRATIONS, SqliteStore, StoreError, probe

REPO = Path(__file__).resolve().parent.parent

AnyStore = SqliteStore | PgStore


def engine_and_clock() -> tuple[QueueEngine, FakeClock]:
    clock = FakeClock()
    return QueueEngine([QueuePolicy("sales"), QueuePolicy("support")], clock), clock


@dataclass
class Backend:
    """One back-end under test: ``open()`` opens (again) the same database; every store
    it opened is closed at teardown. ``raw_error(sql)``: run ``sql`` on a connection of
    its own, outside the store, and return the error it must fail with."""

    name: str
    opener: Callable[[], Awaitable[AnyStore]]
    raw_error: Callable[[str], Awaitable[str]]
    opened: list[AnyStore] = field(default_factory=list)

    async def open(self) -> AnyStore:
        store = await self.opener()
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "ivr.db"

        async def open_sqlite() -> AnyStore:
            return await SqliteStore.open(path)

        async def sqlite_error(sql: str) -> str:
            conn = sqlite3.connect(path)
            try:
                with pytest.raises(sqlite3.Error) as info:
                    conn.execute(sql)
            finally:
                conn.close()
            return str(info.value)

        b = Backend("sqlite", open_sqlite, sqlite_error)
    else:
        # Asked for here, not as a parameter: a SQLite-only run starts no PostgreSQL.
        dsn: str = request.getfixturevalue("pg_dsn")

        async def open_pg() -> AnyStore:
            return await PgStore.open(dsn)

        async def pg_error(sql: str) -> str:
            conn = await asyncpg.connect(dsn)
            try:
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.execute(sql)
            finally:
                await conn.close()
            return str(info.value)

        b = Backend("postgres", open_pg, pg_error)
    yield b
    for store in b.opened:
        await store.close()


async def test_round_trip_open_items_in_order(backend: Backend) -> None:
    engine, clock = engine_and_clock()
    store = await backend.open()
    try:
        a = engine.arrive("sales", channel_id="chan-1", number="0201")
        clock.advance(1)
        b = engine.arrive("sales", channel_id="chan-2", number="0202")
        clock.advance(1)
        c = engine.add_callback("support", "0203")
        gone = engine.arrive("sales", channel_id="chan-3", number=None)
        await store.save(engine.drain_changes())
        engine.convert_to_callback(b.id, "0202")
        engine.abandon(gone.id)
        engine.dispatch({"agent-1": ["support"]})
        engine.offer_declined(c.id, "agent-1")
        await store.save(engine.drain_changes())

        loaded = await store.load_open()
        assert [i.id for i in loaded] == [a.id, b.id, c.id]
        lb = loaded[1]
        assert lb.state is State.CALLBACK_PENDING and lb.channel_id is None
        assert lb.arrived_at == b.arrived_at and lb.seq == b.seq
        assert [h.event for h in lb.history] == [h.event for h in b.history]
        assert loaded[2].declined_by == {"agent-1"}
        assert [(h.at, h.event, h.detail) for h in loaded[2].history] == [
            (h.at, h.event, h.detail) for h in c.history
        ]
        closed = await store.load(gone.id)
        assert closed is not None and closed.state is State.ABANDONED
        assert [h.event for h in closed.history] == ["arrived", "abandoned"]
        assert await store.load("nope") is None
    finally:
        await store.close()


async def test_reopen_restores_engine(backend: Backend) -> None:
    engine, clock = engine_and_clock()
    store = await backend.open()
    items = [engine.add_callback("sales", f"0201{i}") for i in range(5)]
    engine.dispatch({"a": ["sales"]})
    engine.dial_started(items[0].id, "a")
    await store.save(engine.drain_changes())
    await store.close()

    store = await backend.open()
    try:
        fresh, fresh_clock = engine_and_clock()
        fresh_clock.set(clock.now() + 10)
        fresh.restore(await store.load_open())
        assert [i.id for i in fresh.items("sales")] == [i.id for i in items]
        assert fresh.get(items[0].id).state is State.CALLBACK_PENDING  # dial lost
        # the repair is itself saved, and history stays append-only
        await store.save(fresh.drain_changes())
        again = await store.load(items[0].id)
        assert again is not None
        assert [h.event for h in again.history][-1] == "dial_lost_on_restart"
    finally:
        await store.close()


async def test_history_is_append_only(backend: Backend) -> None:
    engine, _ = engine_and_clock()
    store = await backend.open()
    engine.add_callback("sales", "0201")
    await store.save(engine.drain_changes())
    await store.close()
    assert "append-only" in await backend.raw_error("UPDATE history SET event = 'x'")
    assert "append-only" in await backend.raw_error("DELETE FROM history")


async def test_group_commit_batches_concurrent_saves(backend: Backend) -> None:
    engine, _ = engine_and_clock()
    store = await backend.open()
    try:

        async def one(i: int) -> str:
            item = engine.add_callback("sales", f"07700900{i:03d}")
            await store.save(engine.drain_changes())
            return item.id

        saved = await asyncio.gather(*(one(i) for i in range(200)))
        assert store.commits < 200  # grouped
        loaded = await store.load_open()
        assert [i.id for i in loaded] == saved
    finally:
        await store.close()


async def test_empty_save_is_a_barrier(backend: Backend) -> None:
    """A flow whose change was drained by another flow's save must still not resume
    before that change is durable: save([]) resolves after earlier saves commit."""
    engine, _ = engine_and_clock()
    store = await backend.open()
    try:
        order: list[str] = []
        item = engine.add_callback("sales", "0201")

        async def first() -> None:
            await store.save(engine.drain_changes())
            order.append("first")

        async def second() -> None:
            await store.save(engine.drain_changes())  # empty: first took it
            order.append("second")

        await asyncio.gather(first(), second())
        assert order == ["first", "second"]
        assert await store.load(item.id) is not None
    finally:
        await store.close()


async def test_save_does_not_block_the_event_loop(backend: Backend) -> None:
    engine, _ = engine_and_clock()
    store = await backend.open()
    try:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        for i in range(30):
            engine.add_callback("sales", f"0201{i:03d}")
            await store.save(engine.drain_changes())
        stop.set()
        await task
        assert ticks >= 30  # the loop ran while every commit was in flight
        assert threading.current_thread() is threading.main_thread()
    finally:
        await store.close()


async def test_failed_save_fails_only_its_caller(backend: Backend) -> None:
    engine, _ = engine_and_clock()
    store = await backend.open()
    try:
        good = engine.add_callback("sales", "0201")
        bad = engine.add_callback("sales", "0202")
        changes = engine.drain_changes()
        # A NOT NULL violation, as a corrupt item would cause.
        bad.queue = None  # type: ignore[assignment]
        results = await asyncio.gather(
            store.save([changes[0]]), store.save([bad]), return_exceptions=True
        )
        assert results[0] is None
        assert isinstance(results[1], StoreError)
        assert await store.load(good.id) is not None
        assert await store.load(bad.id) is None
    finally:
        await store.close()


async def test_closed_store_refuses(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.save([])
    with pytest.raises(StoreError):
        await store.load_open()


async def test_cancelled_waiter_does_not_break_the_worker(backend: Backend) -> None:
    engine, _ = engine_and_clock()
    store = await backend.open()
    try:
        engine.add_callback("sales", "0201")
        task = asyncio.create_task(store.save(engine.drain_changes()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        engine.add_callback("sales", "0202")
        await store.save(engine.drain_changes())
        assert time.monotonic() - t0 < 5
        assert len(await store.load_open()) == 2  # the cancelled save still committed
    finally:
        await store.close()


async def test_every_field_round_trips_exactly(backend: Backend) -> None:
    """Floats come back bit for bit (PostgreSQL: double precision), and every column,
    the newer ones (language, node) included, makes the trip."""
    engine, clock = engine_and_clock()
    clock.advance(0.123456789)
    store = await backend.open()
    live = engine.arrive("sales", channel_id="chan-1", number="+12015550123",
                         language="fr", node="asterisk-b")
    cb = engine.add_callback("support", "+12015550124")
    engine.dispatch({"agent-1": ["support"]})
    engine.offer_declined(cb.id, "agent-1")
    live.predicted_wait = 0.1 + 0.2
    cb.next_eligible_at = 1e-300
    cb.expires_at = 1.7976931348623157e308
    cb.attempts = 3
    await store.save(engine.drain_changes())
    for item in (live, cb):
        loaded = await store.load(item.id)
        assert loaded is not None
        # WorkItem compares by identity: compare every field (history included); float
        # == is exact, bit for bit here.
        assert dataclasses.astuple(loaded) == dataclasses.astuple(item)
    assert [i.id for i in await store.load_open()] == [live.id, cb.id]


async def test_funnel_and_recent_callbacks(backend: Backend) -> None:
    engine, clock = engine_and_clock()
    store = await backend.open()
    done, cancelled, still_open = (engine.add_callback("sales", f"+1201555012{i}")
                                   for i in range(3))
    engine.dispatch({"a": ["sales"]})
    engine.dial_started(done.id, "a")
    clock.advance(5)
    engine.callback_connected(done.id)
    clock.advance(5)
    engine.cancel(cancelled.id)
    gone = engine.arrive("support", channel_id="c", number=None)
    engine.abandon(gone.id)
    await store.save(engine.drain_changes())

    funnel = await store.funnel(0.0)
    assert funnel["sales"]["callback_requested"] == 3
    assert funnel["sales"]["dial_started"] == 1
    assert funnel["sales"]["callback_connected"] == 1
    assert funnel["sales"]["cancelled"] == 1
    assert "support" not in funnel  # "arrived"/"abandoned" are not funnel events
    assert await store.funnel(clock.now() + 1) == {}

    recent = await store.recent_callbacks(10)
    assert [i.id for i in recent] == [cancelled.id, done.id]  # latest closed first
    assert [h.event for h in recent[1].history] == [h.event for h in done.history]
    assert [i.id for i in await store.recent_callbacks(1)] == [cancelled.id]
    assert [i.id for i in await store.load_open()] == [still_open.id]


async def test_closed_item_saved_again_keeps_its_history(backend: Backend) -> None:
    """A closed item is forgotten by the history bookkeeping: saving it again resends
    all its history, which must be ignored, not refused (append-only)."""
    engine, _ = engine_and_clock()
    store = await backend.open()
    item = engine.add_callback("sales", "+12015550123")
    engine.cancel(item.id)
    await store.save(engine.drain_changes())
    await store.save([item])
    loaded = await store.load(item.id)
    assert loaded is not None and loaded.history == item.history


# --------------------------------------------------------------------------- SQLite only


async def test_schema_version_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "ivr.db"
    store = await SqliteStore.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(path)


async def test_queries_use_the_indexes(tmp_path: Path) -> None:
    """Start-up must not scan the whole (ever-growing) history or items tables."""
    from ivr.store import _ITEM_COLUMNS, _OPEN_SQL

    path = tmp_path / "ivr.db"
    store = await SqliteStore.open(path)
    await store.close()
    conn = sqlite3.connect(path)

    def plan(sql: str) -> str:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))

    items_plan = plan(
        f"SELECT {_ITEM_COLUMNS} FROM items WHERE state IN ({_OPEN_SQL}) ORDER BY arrived_at, seq"
    )
    assert "USING INDEX items_open" in items_plan and "TEMP B-TREE" not in items_plan
    history_plan = plan(
        "SELECT h.item_id FROM items i CROSS JOIN history h ON h.item_id = i.id "
        f"WHERE i.state IN ({_OPEN_SQL}) ORDER BY i.arrived_at, i.seq, h.idx"
    )
    assert "SCAN i USING INDEX items_open" in history_plan
    assert "SEARCH h USING PRIMARY KEY" in history_plan
    conn.close()


# --------------------------------------------------------------------------- file safety


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_store_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "ivr.db"
    engine, _ = engine_and_clock()
    store = await SqliteStore.open(path)
    try:
        engine.add_callback("sales", "+12015550123")
        await store.save(engine.drain_changes())
        # The connection is open: the -wal and -shm files exist now.
        for suffix in ("", "-wal", "-shm"):
            assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
        assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    finally:
        await store.close()
    assert mode(path) == 0o600


async def test_existing_open_files_are_tightened(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ivr.db"
    store = await SqliteStore.open(path)
    await store.close()
    os.chmod(path, 0o644)
    # A -wal left behind readable by all (e.g. by an older version after a crash).
    wal = Path(f"{path}-wal")
    os.close(os.open(wal, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(wal, 0o666)
    with caplog.at_level(logging.WARNING, logger="ivr.store"):
        store = await SqliteStore.open(path)
    try:
        assert mode(path) == 0o600 and mode(wal) == 0o600
        assert mode(Path(f"{path}-shm")) == 0o600
        assert any("0644" in r.getMessage() for r in caplog.records)
        assert await store.load_open() == []
    finally:
        await store.close()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_probe_accepts_usable_paths_and_creates_nothing(tmp_path: Path) -> None:
    assert probe(tmp_path / "ivr.db") is None
    assert probe(tmp_path / "a" / "b" / "ivr.db") is None
    assert listing(tmp_path) == []
    path = tmp_path / "ivr.db"
    engine, _ = engine_and_clock()
    store = await SqliteStore.open(path)
    engine.add_callback("sales", "+12015550123")
    await store.save(engine.drain_changes())
    # While the service runs (-wal and -shm present) ...
    assert probe(path) is None
    before = listing(tmp_path)
    await store.close()
    # ... and after a clean stop (WAL database, no -wal/-shm): nothing is created.
    assert listing(tmp_path) == ["ivr.db"] and before == ["ivr.db", "ivr.db-shm", "ivr.db-wal"]
    assert probe(path) is None
    assert listing(tmp_path) == ["ivr.db"]
    os.truncate(path, 0)  # an empty file is an empty database to SQLite
    assert probe(path) is None


def test_probe_refuses_unusable_paths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    reason = probe(tmp_path / "file" / "ivr.db")
    assert reason is not None and "not a directory" in reason
    reason = probe(tmp_path / "file" / "deeper" / "ivr.db")
    assert reason is not None and "not a directory" in reason
    reason = probe(tmp_path)
    assert reason is not None and "not a regular file" in reason
    reason = probe(tmp_path / "nul\x00.db")
    assert reason is not None and "\n" not in reason
    random_bytes = tmp_path / "random.db"
    random_bytes.write_bytes(random.Random(1).randbytes(8192))
    reason = probe(random_bytes)
    assert reason is not None and "not a SQLite database" in reason


async def test_probe_refuses_damaged_and_newer_databases(tmp_path: Path) -> None:
    path = tmp_path / "ivr.db"
    engine, _ = engine_and_clock()
    store = await SqliteStore.open(path)
    for i in range(200):
        engine.add_callback("sales", f"+1201555{i:04d}")
    await store.save(engine.drain_changes())
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    reason = probe(path)
    assert reason is not None and "newer" in reason
    # Same header, garbage pages.
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page * 2 : page * 4] = random.Random(2).randbytes(page * 2)
    path.write_bytes(bytes(data))
    reason = probe(path)
    assert reason is not None and str(path) in reason


def test_probe_refuses_read_only_places(tmp_path: Path) -> None:
    """A store file or folder this user cannot write is refused before anything starts.
    Root may write anywhere a mode bit forbids, so as root the place is a read-only
    mount (EROFS binds root too); otherwise mode bits do it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)], check=True)
        try:
            (ro / "ivr.db").write_bytes(b"")
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            _expect_read_only(ro)
        finally:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        return
    (ro / "ivr.db").write_bytes(b"")
    os.chmod(ro / "ivr.db", 0o400)
    try:
        reason = probe(ro / "ivr.db")
        assert reason is not None and "readable and writable" in reason, reason
        os.chmod(ro / "ivr.db", 0o600)
        os.chmod(ro, 0o500)
        _expect_read_only(ro)
    finally:
        os.chmod(ro, 0o700)


def _expect_read_only(ro: Path) -> None:
    reason = probe(ro / "ivr.db")
    assert reason is not None and "writable" in reason, reason
    reason = probe(ro / "sub" / "ivr.db")
    assert reason is not None and "not writable" in reason, reason
