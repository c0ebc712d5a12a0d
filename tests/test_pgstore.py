"""PgStore's own behaviour (the shared Store semantics are in test_store.py, for both
back-ends): one active instance per database (a second waits for the lock and takes
over when the first's session ends), fencing of an instance that lost its session,
schema versions, probe_url, durability, and no password in any message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ivr.domain import FakeClock, QueueEngine, QueuePolicy
from ivr.pgstore import PG_MIGRATIONS, WRITER_NAME, PgStore, probe_url, redact_url
from ivr.store import StoreError
from rig.postgres import PgServer
from tests.support.waiting import until, until_async

FENCED = "lost the PostgreSQL session holding the active lock"


def engine() -> QueueEngine:
    return QueueEngine([QueuePolicy("sales")], FakeClock())


def db_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def password(dsn: str) -> str:
    pw = urlsplit(dsn).password
    assert pw
    return pw


def with_netloc(dsn: str, netloc: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(netloc=netloc))


@pytest.fixture
async def admin(pg_server: PgServer) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A superuser connection of the test's own, to watch sessions and change things
    behind the store's back."""
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        yield conn
    finally:
        await conn.close()


def writers(admin: asyncpg.Connection[asyncpg.Record], dsn: str, n: int, *,
            waiting: bool = False) -> Callable[[], Awaitable[bool]]:
    """A condition for ``until_async``: this database has ``n`` store writer sessions
    (``waiting``: ``n`` of them wait for an advisory lock, blocked in the server)."""
    async def check() -> bool:
        count = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
            "AND application_name = $2 AND (NOT $3 OR (wait_event_type = 'Lock' "
            "AND wait_event = 'advisory'))", db_name(dsn), WRITER_NAME, waiting)
        return int(count) == n

    return check


# --------------------------------------------------------------------------- exclusivity


async def test_second_instance_waits_until_the_first_closes(
    pg_dsn: str, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    eng = engine()
    first = await PgStore.open(pg_dsn)
    waits: list[float] = []
    second_open = asyncio.create_task(
        PgStore.open(pg_dsn, on_waiting=lambda: waits.append(time.monotonic())))
    try:
        await until(lambda: bool(waits), what="on_waiting")
        # Really blocked in the server, not just told so.
        await until_async(writers(admin, pg_dsn, 1, waiting=True),
                          what="the second writer waiting for the advisory lock")
        assert not second_open.done()
        # The active instance works on while the standby waits.
        item = eng.add_callback("sales", "+12015550123")
        await first.save(eng.drain_changes())

        t0 = time.monotonic()
        await first.close()
        second = await asyncio.wait_for(second_open, 30)
        took = time.monotonic() - t0
        print(f"\nlock takeover after close(): {took * 1000:.1f} ms")
        try:
            assert len(waits) == 1
            assert [i.id for i in await second.load_open()] == [item.id]
            eng.add_callback("sales", "+12015550124")
            await second.save(eng.drain_changes())
            assert len(await second.load_open()) == 2
        finally:
            await second.close()
    finally:
        await _cancel(second_open)
        await first.close()


async def test_standby_takes_over_when_the_active_session_is_terminated(
    pg_dsn: str, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """The active instance's backend ends (an operator, a dead network the server timed
    out): the standby gets the lock at once, and the old active is fenced."""
    eng = engine()
    fenced: list[str] = []
    first = await PgStore.open(pg_dsn, on_fenced=fenced.append)
    kept = eng.add_callback("sales", "+12015550123")
    await first.save(eng.drain_changes())
    waiting = asyncio.Event()
    second_open = asyncio.create_task(PgStore.open(pg_dsn, on_waiting=waiting.set))
    try:
        await asyncio.wait_for(waiting.wait(), 30)
        await until_async(writers(admin, pg_dsn, 1, waiting=True),
                          what="the second writer waiting for the advisory lock")
        # On the admin connection rather than pg_server.terminate (a psql process): the
        # figure printed is then the takeover itself.
        t0 = time.monotonic()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first.backend_pid)
        second = await asyncio.wait_for(second_open, 30)
        took = time.monotonic() - t0
        print(f"\nlock takeover after pg_terminate_backend: {took * 1000:.1f} ms")
        try:
            await until(lambda: first.fenced, what="the old active fenced")
            assert len(fenced) == 1
            eng.add_callback("sales", "+12015550124")
            with pytest.raises(StoreError, match=FENCED):
                await first.save(eng.drain_changes())
            assert len(fenced) == 1
            assert [i.id for i in await second.load_open()] == [kept.id]
        finally:
            await second.close()
    finally:
        await _cancel(second_open)
        await first.close()


async def test_standby_waits_in_slices(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The wait for the lock is cut into slices (each a round trip that would notice a
    dead connection); a standby goes on waiting across them and still takes over."""
    import ivr.pgstore

    monkeypatch.setattr(ivr.pgstore, "LOCK_WAIT_SLICE", 0.05)
    first = await PgStore.open(pg_dsn)
    caplog.set_level(logging.DEBUG, logger="ivr.pgstore")
    second_open = asyncio.create_task(PgStore.open(pg_dsn))
    try:
        await until(lambda: sum("still held" in r.getMessage() for r in caplog.records) >= 3,
                    what="three slices of waiting")
        assert not second_open.done()
        await first.close()
        second = await asyncio.wait_for(second_open, 30)
        await second.close()
    finally:
        await _cancel(second_open)
        await first.close()


async def test_cancelled_wait_leaves_no_session(
    pg_dsn: str, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    first = await PgStore.open(pg_dsn)
    waiting = asyncio.Event()
    second_open = asyncio.create_task(PgStore.open(pg_dsn, on_waiting=waiting.set))
    try:
        await asyncio.wait_for(waiting.wait(), 30)
        second_open.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second_open
        await until_async(writers(admin, pg_dsn, 1),
                          what="only the active writer's session left")
    finally:
        await first.close()
    third = await PgStore.open(pg_dsn, on_waiting=lambda: pytest.fail("lock not free"))
    await third.close()


async def test_lock_key_separates_deployments_on_one_database(pg_dsn: str) -> None:
    a = await PgStore.open(pg_dsn, lock_key=1)
    b = await PgStore.open(pg_dsn, lock_key=2, on_waiting=lambda: pytest.fail("waited"))
    assert (a.lock_key, b.lock_key) == (1, 2)
    await a.close()
    await b.close()


# --------------------------------------------------------------------------- fencing


async def test_terminated_session_fences_the_store(pg_dsn: str, pg_server: PgServer) -> None:
    eng = engine()
    fenced: list[str] = []
    store = await PgStore.open(pg_dsn, on_fenced=fenced.append, heartbeat=60)
    try:
        before = eng.add_callback("sales", "+12015550123")
        await store.save(eng.drain_changes())
        # terminate() returns once the backend is gone; the save right after must fail
        # whether or not the client has noticed yet.
        assert await asyncio.to_thread(pg_server.terminate, store.backend_pid) == 1
        after = [eng.add_callback("sales", f"+1201555013{i}") for i in range(5)]
        changes = eng.drain_changes()
        results = await asyncio.gather(*(store.save([item]) for item in changes),
                                       store.save([]), return_exceptions=True)
        assert all(isinstance(r, StoreError) and FENCED in str(r) for r in results), results
        assert store.fenced
        with pytest.raises(StoreError, match=FENCED):
            await store.save(changes)
        assert len(fenced) == 1 and fenced[0] in str(results[0])
    finally:
        await store.close()
    # Nothing was written after the session was lost.
    check = await PgStore.open(pg_dsn)
    try:
        assert [i.id for i in await check.load_open()] == [before.id]
        for item in after:
            assert await check.load(item.id) is None
    finally:
        await check.close()


async def test_a_failing_writer_fences_instead_of_hanging(pg_dsn: str) -> None:
    """Should the writer task ever die (a bug), saves must fail, not wait forever."""
    fenced: list[str] = []
    store = await PgStore.open(pg_dsn, on_fenced=fenced.append)

    async def broken(batch: object) -> None:
        raise RuntimeError("bug")

    store._commit = broken  # type: ignore[method-assign]
    try:
        eng = engine()
        with pytest.raises(StoreError, match=FENCED):
            await asyncio.wait_for(store.save([eng.add_callback("sales", "+12015550123")]), 30)
        assert len(fenced) == 1 and "bug" in fenced[0]
    finally:
        await store.close()


class FreezingProxy:
    """A TCP proxy that can go silent: ``freeze()`` stops forwarding in both directions
    without closing anything, as a network that drops every packet does."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.port = 0
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self.frozen.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # silent: hold everything, forever
                dst.write(data)
                await dst.drain()


async def test_heartbeat_fences_a_silent_connection(pg_dsn: str, pg_server: PgServer) -> None:
    """No FIN, no RST, no error: only the heartbeat can tell the session is gone."""
    proxy = FreezingProxy(pg_server.port)
    await proxy.start()
    dsn = with_netloc(pg_dsn, urlsplit(pg_dsn).netloc.replace(str(pg_server.port),
                                                              str(proxy.port)))
    eng = engine()
    fenced: list[str] = []
    store = await PgStore.open(dsn, on_fenced=fenced.append, heartbeat=0.2)
    try:
        await store.save([eng.add_callback("sales", "+12015550123")])
        proxy.freeze()
        t0 = time.monotonic()
        await until(lambda: store.fenced, what="fenced by the heartbeat")
        print(f"\nfenced {(time.monotonic() - t0) * 1000:.0f} ms after the network went "
              "silent (heartbeat 0.2 s)")
        assert len(fenced) == 1 and "heartbeat" in fenced[0]
        with pytest.raises(StoreError, match=FENCED):
            await store.save([eng.add_callback("sales", "+12015550124")])
    finally:
        await proxy.close()  # first: the pool's connections through it end at once
        await store.close()


# --------------------------------------------------------------------------- schema


async def test_newer_schema_is_refused(pg_dsn: str) -> None:
    store = await PgStore.open(pg_dsn)
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT version FROM ivr_schema_version") == len(
            PG_MIGRATIONS)
        await conn.execute("UPDATE ivr_schema_version SET version = $1",
                           len(PG_MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this program"):
        await PgStore.open(pg_dsn)
    reason = probe_url(pg_dsn)
    assert reason is not None and "newer" in reason


async def test_history_cannot_be_truncated(pg_dsn: str) -> None:
    store = await PgStore.open(pg_dsn)
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("TRUNCATE history")
    finally:
        await conn.close()


async def test_load_open_can_use_the_partial_index(pg_dsn: str) -> None:
    """Start-up must be able to walk the open items by index, not scan every item ever
    stored, in queue order without a sort (on tiny tables the planner prefers a scan,
    so the alternatives are switched off to ask whether the index can serve)."""
    from ivr.store import _ITEM_COLUMNS, _OPEN_SQL

    store = await PgStore.open(pg_dsn)
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("SET enable_bitmapscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            f"EXPLAIN SELECT {_ITEM_COLUMNS} FROM items WHERE state IN ({_OPEN_SQL}) "
            "ORDER BY arrived_at, seq"))
        assert "Index Scan using items_open" in plan and "Sort" not in plan, plan
    finally:
        await conn.close()


# --------------------------------------------------------------------------- durability


async def test_save_is_committed_before_it_returns(
    pg_dsn: str, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Even where the database's default is asynchronous commit, the writer commits
    synchronously, and a save's rows are visible to any other session once it returns."""
    await admin.execute(f"ALTER DATABASE {db_name(pg_dsn)} SET synchronous_commit = off")
    eng = engine()
    store = await PgStore.open(pg_dsn, heartbeat=60)  # no ping racing the SHOW below
    other = await asyncpg.connect(pg_dsn)
    try:
        assert store._conn is not None
        assert await store._conn.fetchval("SHOW synchronous_commit") == "on"
        # And the writer's session ends soon after this instance dies (a standby's wait).
        assert await store._conn.fetchval("SHOW tcp_keepalives_idle") == "5"
        assert await store._conn.fetchval("SHOW client_connection_check_interval") == "2s"
        assert await other.fetchval("SHOW synchronous_commit") == "off"  # the default

        async def saver(k: int) -> None:
            for n in range(10):
                item = eng.add_callback("sales", f"+1201555{k:02d}{n:02d}")
                await store.save(eng.drain_changes())
                assert await other.fetchval(
                    "SELECT count(*) FROM history WHERE item_id = $1", item.id) == 1

        # One checking connection: the savers take turns on it.
        lock = asyncio.Lock()

        async def guarded(k: int) -> None:
            async with lock:
                await saver(k)

        await asyncio.gather(*(guarded(k) for k in range(5)))
        assert await other.fetchval("SELECT count(*) FROM items") == 50
    finally:
        await other.close()
        await store.close()


# --------------------------------------------------------------------------- probe and secrets


async def test_probe_url_accepts_a_usable_database(pg_dsn: str) -> None:
    assert probe_url(pg_dsn) is None  # fresh, empty: the first open makes the tables
    store = await PgStore.open(pg_dsn)
    await store.close()
    # Called from inside a running loop (as here) or not, it answers the same.
    assert probe_url(pg_dsn) is None
    assert await asyncio.to_thread(probe_url, pg_dsn) is None


async def test_probe_url_refuses_and_hides_the_password(
    pg_dsn: str, pg_server: PgServer
) -> None:
    secret = password(pg_dsn)
    user_host = urlsplit(pg_dsn).netloc.rpartition("@")[2]
    wrong = "wrong-" + secrets.token_hex(8)

    async def refused(url: str, *expected: str) -> str:
        reason = await asyncio.to_thread(probe_url, url)
        assert reason is not None, url
        assert secret not in reason and wrong not in reason, reason
        assert "\n" not in reason
        for text in expected:
            assert text in reason, reason
        return reason

    # Nothing listens there (a port handed out and not used).
    from rig.sandbox import free_port

    closed = with_netloc(pg_dsn, f"ivr:{secret}@127.0.0.1:{free_port(udp=False)}")
    await refused(closed, "cannot connect", "ivr:***@")
    await refused(with_netloc(pg_dsn, f"ivr:{wrong}@{user_host}"), "password authentication")
    await refused(pg_dsn.rsplit("/", 1)[0] + "/no_such_db", "no_such_db", "does not exist")
    await refused("sqlite:///var/lib/ivr/ivr.db", "not a postgresql:// URL")

    # Something listens, but it is not PostgreSQL.
    async def not_postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_postgres, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        await refused(with_netloc(pg_dsn, f"ivr:{secret}@127.0.0.1:{port}"), "cannot connect")
    finally:
        server.close()
        await server.wait_closed()

    # A role that may log in but not create the tables (no CREATE on schema public).
    reader_pw = secrets.token_hex(8)
    await asyncio.to_thread(pg_server.psql,
                            "CREATE ROLE probe_reader LOGIN PASSWORD :'pw'", pw=reader_pw)
    try:
        url = with_netloc(pg_dsn, f"probe_reader:{reader_pw}@{user_host}")
        reason = await refused(url, "may not create")
        assert reader_pw not in reason
    finally:
        await asyncio.to_thread(pg_server.psql, "DROP ROLE probe_reader")


async def test_open_errors_hide_the_password(pg_dsn: str) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    bad = with_netloc(pg_dsn, f"ivr:{wrong}@{urlsplit(pg_dsn).netloc.rpartition('@')[2]}")
    with pytest.raises(StoreError) as info:
        await PgStore.open(bad)
    assert wrong not in str(info.value) and "password authentication" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_redact_url() -> None:
    assert redact_url("postgresql://ivr:s3cr%40t@db:5432/ivr") == "postgresql://ivr:***@db:5432/ivr"
    assert redact_url("postgresql://ivr@db/ivr") == "postgresql://ivr@db/ivr"
    assert "s3cret" not in redact_url("postgresql://db/ivr?user=ivr&password=s3cret")


async def _cancel(task: asyncio.Task[PgStore]) -> None:
    """A test that failed half-way: never leave a waiting open() behind."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        store = await task
        await store.close()
