"""Durable work items in PostgreSQL: the ``Store`` of ivr/store.py for several service
instances sharing one database, one of them active, the others standing by.

Same semantics as SqliteStore: ``save()`` returns only once its rows are committed with
``synchronous_commit = on`` (flushed to the server's disk; with synchronous standbys,
also to them), saves go through ONE writer connection fed by a FIFO queue with group
commit (saves arriving during a commit share the next transaction), ``save([])`` is a
barrier, one bad save in a group does not fail the others, history is append-only and
only new history entries are sent.

Exclusivity: every instance of one database contends for one session-level advisory
lock, taken on the writer connection before anything is written; ``open()`` of a
standby blocks until the active instance's session ends. All writes go through the
connection holding the lock, so an instance that lost its session (network cut,
backend terminated, server restart) can never write after another took over: it is
FENCED: it never reconnects, every later save fails and ``on_fenced`` tells the app,
which exits so its supervisor restarts it as a standby.

Reads run on a small pool, each in a REPEATABLE READ snapshot so an item and its
history are read consistently while the writer commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgexc

from ivr.domain.items import HistoryEntry, WorkItem
from ivr.store import (
    _ITEM_COLUMNS,
    _OPEN_SQL,
    FUNNEL_EVENTS,
    MAX_GROUP,
    HistoryRow,
    ItemRow,
    Store,
    StoreError,
    _from_row,
    _rows_to_send,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The advisory lock key all instances of one database contend for ("ivr-stor" in
#: ASCII). Advisory locks are per database: deployments on other databases of the same
#: server do not contend.
DEFAULT_LOCK_KEY = 0x6976_722D_7374_6F72
#: A write (one group's transaction) or a read that takes longer means the server or
#: the network is gone; the writer then fences itself instead of hanging flows.
WRITE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
#: A standby's wait for the lock is cut into slices this long, each a round trip, so a
#: standby whose connection died silently notices instead of waiting forever.
LOCK_WAIT_SLICE = 10.0
POOL_SIZE = 4
#: EXECUTE FUNCTION in triggers.
MIN_SERVER_VERSION = 11
#: Server-side keepalives for the writer's session: if this instance dies or is cut off,
#: the server ends its session (releasing the lock for a standby) within about
#: idle + interval * count seconds, whatever the server's defaults.
WRITER_KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
                     "tcp_keepalives_count": "3"}
WRITER_NAME = "ivr-store-writer"
READER_NAME = "ivr-store-reader"

_STOP = object()
_FENCED = "lost the PostgreSQL session holding the active lock: "

# Each entry moves the schema from version i to i + 1 (ivr_schema_version). Append only;
# never edit a released entry. The tables mirror SQLite's (ivr/store.py) at its latest
# version, so the row helpers there serve both; double precision holds a Python float
# exactly.
PG_MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE items (
        id               text PRIMARY KEY,
        queue            text NOT NULL,
        kind             text NOT NULL,
        state            text NOT NULL,
        arrived_at       double precision NOT NULL,
        seq              bigint NOT NULL,
        number           text,
        channel_id       text,
        attempts         integer NOT NULL,
        next_eligible_at double precision NOT NULL,
        offered_to       text,
        declined_by      text NOT NULL,
        created_at       double precision NOT NULL,
        updated_at       double precision NOT NULL,
        expires_at       double precision,
        predicted_wait   double precision,
        language         text NOT NULL DEFAULT '',
        node             text NOT NULL DEFAULT ''
    );
    CREATE INDEX items_open ON items (arrived_at, seq) WHERE state IN ({_OPEN_SQL});
    CREATE INDEX items_closed ON items (kind, updated_at);
    CREATE TABLE history (
        item_id text NOT NULL REFERENCES items (id),
        idx     integer NOT NULL,
        at      double precision NOT NULL,
        event   text NOT NULL,
        detail  text NOT NULL,
        PRIMARY KEY (item_id, idx)
    );
    CREATE INDEX history_at ON history (at, event);
    CREATE FUNCTION ivr_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'history is append-only'; END $$;
    CREATE TRIGGER history_no_change BEFORE UPDATE OR DELETE ON history
        FOR EACH ROW EXECUTE FUNCTION ivr_history_append_only();
    CREATE TRIGGER history_no_truncate BEFORE TRUNCATE ON history
        FOR EACH STATEMENT EXECUTE FUNCTION ivr_history_append_only();
    """,
]

_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS ivr_schema_version (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        version integer NOT NULL
    );
    INSERT INTO ivr_schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;
"""

_COLUMNS = [c.strip() for c in _ITEM_COLUMNS.split(",")]
_UPSERT = (
    f"INSERT INTO items ({_ITEM_COLUMNS}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "id")
)
# DO NOTHING: a save that failed and is retried may resend entries already written.
_INSERT_HISTORY = (
    "INSERT INTO history (item_id, idx, at, event, detail) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT DO NOTHING"
)


@dataclass(slots=True)
class _Save:
    items: list[ItemRow]
    history: list[HistoryRow]
    future: asyncio.Future[None]


class PgStore(Store):
    """PostgreSQL, one writer connection holding the advisory lock, group commit."""

    def __init__(self, dsn: str, *, lock_key: int, heartbeat: float,
                 on_fenced: Callable[[str], None] | None) -> None:
        # Use ``await PgStore.open(dsn)``: opening takes the lock and migrates.
        self._dsn = dsn  # holds the password: never logged, see ``target``
        self.target = redact_url(dsn)
        self.lock_key = lock_key
        self._heartbeat = heartbeat
        self._on_fenced = on_fenced
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._jobs: deque[_Save | object] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._closing = False  # our own close: the connection's end is no fencing
        self._fence_reason: str | None = None
        # History entries already sent, per item: only new entries are written.
        self._history_sent: dict[str, int] = {}
        self.commits = 0  # transactions committed (group commit makes this < saves)
        self.backend_pid = 0  # the writer's server process (pg_stat_activity.pid)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        lock_key: int = DEFAULT_LOCK_KEY,
        on_waiting: Callable[[], None] | None = None,
        on_fenced: Callable[[str], None] | None = None,
        heartbeat: float = 1.0,
    ) -> PgStore:
        """Connect, take the lock (waiting while another instance holds it: then
        ``on_waiting()`` is called once), migrate, and return the store. Raises
        StoreError when the server cannot be used (the message holds no password)."""
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        store = cls(dsn, lock_key=lock_key, heartbeat=heartbeat, on_fenced=on_fenced)
        try:
            await store._start(on_waiting)
        except BaseException:
            store._abort()
            raise
        return store

    @property
    def fenced(self) -> bool:
        return self._fence_reason is not None

    # ---------------------------------------------------------------- public API

    async def save(self, items: Sequence[WorkItem]) -> None:
        if self._closed:
            raise StoreError("store is closed")
        if self._fence_reason is not None:
            raise StoreError(_FENCED + self._fence_reason)
        rows, history, ids = _rows_to_send(items, self._history_sent)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Save(rows, history, future))
        self._wake.set()
        try:
            await future
        except BaseException:
            # Unknown whether the rows made it: resend all history next time.
            for item_id in ids:
                self._history_sent.pop(item_id, None)
            raise

    async def load_open(self) -> list[WorkItem]:
        items = await self._read(_load_open)
        for item in items:
            self._history_sent[item.id] = len(item.history)
        return items

    async def load(self, item_id: str) -> WorkItem | None:
        async def one(conn: _Conn) -> WorkItem | None:
            row = await conn.fetchrow(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = $1",
                                      item_id)
            if row is None:
                return None
            return _from_row(tuple(row), (await _histories(conn, [item_id]))[item_id])

        return await self._read(one)

    async def funnel(self, since: float) -> dict[str, dict[str, int]]:
        async def count(conn: _Conn) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for queue_name, event, n in await conn.fetch(
                "SELECT i.queue, h.event, COUNT(DISTINCT h.item_id) FROM history h "
                "JOIN items i ON i.id = h.item_id "
                "WHERE h.at >= $1 AND h.event = ANY($2::text[]) GROUP BY i.queue, h.event",
                since, list(FUNNEL_EVENTS),
            ):
                out.setdefault(queue_name, {})[event] = int(n)
            return out

        return await self._read(count)

    async def recent_callbacks(self, limit: int) -> list[WorkItem]:
        async def recent(conn: _Conn) -> list[WorkItem]:
            rows = await conn.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE kind = 'callback' AND state NOT IN "
                f"({_OPEN_SQL}) ORDER BY updated_at DESC LIMIT $1", limit)
            histories = await _histories(conn, [row[0] for row in rows])
            return [_from_row(tuple(row), histories[row[0]]) for row in rows]

        return await self._read(recent)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            # After every save queued before: close() is a barrier too.
            self._jobs.append(_STOP)
            self._wake.set()
            with contextlib.suppress(Exception):  # a writer that failed was logged
                await self._writer
        self._closing = True
        if self._conn is not None:
            try:
                # Ending the session releases the lock: a standby takes over now.
                await self._conn.close(timeout=5)
            except Exception:
                self._conn.terminate()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except Exception:
                self._pool.terminate()

    # ---------------------------------------------------------------- opening

    async def _start(self, on_waiting: Callable[[], None] | None) -> None:
        settings = {**WRITER_KEEPALIVES,
                    # The writer's own waits and writes are bounded by this module; a
                    # role's statement_timeout must not cut a standby's wait for the lock.
                    "statement_timeout": "0", "lock_timeout": "0"}
        conn = await _connect(self._dsn, WRITER_NAME, settings, CONNECT_TIMEOUT)
        self._conn = conn
        self.backend_pid = conn.get_server_pid()
        try:
            # Explicit, whatever the server, database or role default: save() promises
            # the rows are on the server's disk when it returns.
            await conn.execute("SET synchronous_commit = on")
            await _check_client_while_waiting(conn)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key):
                log.info("store: another instance holds the lock of %s; standing by",
                         self.target)
                if on_waiting is not None:
                    on_waiting()
                await self._wait_for_lock(conn)
            await _migrate(conn)
        except StoreError:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(
                f"PostgreSQL store {self.target}: {_describe(exc, self._dsn)}") from None
        # Only now: before, a lost connection is open()'s error, not a fencing.
        conn.add_termination_listener(self._on_terminated)
        self._pool = await _pool(self._dsn)
        self._writer = asyncio.create_task(self._run(), name="ivr-pgstore-writer")
        self._writer.add_done_callback(self._writer_done)

    async def _wait_for_lock(self, conn: _Conn) -> None:
        """Block in pg_advisory_lock until the active instance's session ends; in slices
        (lock_timeout), each bounded on our side too, so a dead connection is noticed."""
        slice_ = LOCK_WAIT_SLICE  # read at call time: a test shortens it
        await conn.execute(f"SET lock_timeout = '{max(1, int(slice_ * 1000))}ms'")
        while True:
            try:
                await conn.execute("SELECT pg_advisory_lock($1)", self.lock_key,
                                   timeout=slice_ + 2 * self._heartbeat + 5)
            except pgexc.LockNotAvailableError:
                log.debug("store: the lock of %s is still held; waiting on", self.target)
                continue
            break
        await conn.execute("SET lock_timeout = 0")
        log.info("store: took the lock of %s", self.target)

    def _abort(self) -> None:
        """open() failed or was cancelled: drop whatever was opened, now."""
        self._closed = self._closing = True
        if self._writer is not None:
            self._writer.cancel()
        if self._conn is not None:
            self._conn.terminate()
        if self._pool is not None:
            self._pool.terminate()

    # ---------------------------------------------------------------- fencing

    def _on_terminated(self, _conn: object) -> None:
        if not self._closing:
            self._fence("the connection to the server was closed")

    def _fence(self, reason: str) -> None:
        """From now on this instance may not write: fail everything queued, drop the
        connection for good and tell the app (once)."""
        if self._fence_reason is not None or self._closing:
            return
        self._fence_reason = reason
        log.error("store: %s%s (%s)", _FENCED, reason, self.target)
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        err = StoreError(_FENCED + reason)
        for job in self._jobs:
            if isinstance(job, _Save):
                _settle(job.future, err)
        self._jobs = deque(j for j in self._jobs if j is _STOP)
        if self._on_fenced is not None:
            try:
                self._on_fenced(reason)
            except Exception:
                log.exception("store: on_fenced failed")

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """The writer never fails by design; if it did anyway (a bug), later saves would
        hang on futures nobody settles: fence instead, which fails them and tells the
        app."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("store: the writer failed", exc_info=exc)
            self._fence(f"the writer failed: {exc!r}")

    def _lost(self, exc: BaseException) -> bool:
        """Did ``exc`` lose the session (as opposed to a bad row)?"""
        return (
            self._conn is None
            or self._conn.is_closed()
            or isinstance(exc, (OSError, TimeoutError, pgexc.ConnectionDoesNotExistError,
                                pgexc.PostgresConnectionError, pgexc.AdminShutdownError,
                                pgexc.CrashShutdownError, pgexc.CannotConnectNowError))
        )

    # ---------------------------------------------------------------- writer

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                self._wake.clear()
                if self._fence_reason is not None:
                    await self._wake.wait()
                    continue
                try:
                    async with asyncio.timeout(self._heartbeat):
                        await self._wake.wait()
                except TimeoutError:
                    await self._ping()
                continue
            job = self._jobs.popleft()
            if job is _STOP:
                return
            assert isinstance(job, _Save)
            batch = [job]
            while self._jobs and len(batch) < MAX_GROUP:
                nxt = self._jobs[0]
                if not isinstance(nxt, _Save):
                    break  # _STOP: after this group
                self._jobs.popleft()
                batch.append(nxt)
            try:
                await self._commit(batch)
            except Exception as exc:
                # _commit settles every save whatever the database does; if it failed
                # anyway (a bug), this group's callers must not wait forever.
                log.error("store: the writer failed", exc_info=True)
                reason = f"the writer failed: {exc!r}"
                self._fence(reason)
                self._settle_all(batch, StoreError(_FENCED + reason))
                return

    async def _ping(self) -> None:
        """The heartbeat, while idle: an answer within 2 x heartbeat or fenced."""
        assert self._conn is not None
        timeout = 2 * self._heartbeat
        try:
            async with asyncio.timeout(timeout):
                await self._conn.fetchval("SELECT 1")
        except TimeoutError:
            self._fence(f"no answer to the heartbeat within {timeout:g} s")
        except Exception as exc:
            self._fence(f"heartbeat failed: {_describe(exc, self._dsn)}")

    async def _commit(self, batch: list[_Save]) -> None:
        # Exception, not just asyncpg's: whatever happens, every waiter is settled and
        # the writer lives on, or flows would hang on save() forever.
        if self._fence_reason is not None:
            self._settle_all(batch, StoreError(_FENCED + self._fence_reason))
            return
        if not any(s.items or s.history for s in batch):
            # Barriers only: FIFO means every earlier save has committed already.
            self._settle_all(batch, None)
            return
        try:
            await self._write(batch)
        except Exception as exc:
            if self._lost(exc):
                self._lose(exc, batch)
                return
            # One bad save must not fail its neighbours: retry each on its own.
            for i, s in enumerate(batch):
                try:
                    await self._write([s])
                except Exception as exc1:
                    if self._lost(exc1):
                        self._lose(exc1, batch[i:])
                        return
                    _settle(s.future, StoreError(f"save failed: {exc1}"))
                else:
                    _settle(s.future, None)
            return
        self._settle_all(batch, None)

    def _lose(self, exc: BaseException, batch: list[_Save]) -> None:
        if isinstance(exc, TimeoutError):
            reason = f"a write did not finish within {WRITE_TIMEOUT:g} s"
        else:
            reason = f"a write failed: {_describe(exc, self._dsn)}"
        self._fence(reason)
        self._settle_all(batch, StoreError(_FENCED + (self._fence_reason or reason)))

    @staticmethod
    def _settle_all(batch: list[_Save], exc: BaseException | None) -> None:
        for s in batch:
            _settle(s.future, exc)

    async def _write(self, batch: list[_Save]) -> None:
        conn = self._conn
        assert conn is not None
        items = [row for s in batch for row in s.items]
        history = [row for s in batch for row in s.history]
        if not items and not history:
            return
        tx = conn.transaction()
        async with asyncio.timeout(WRITE_TIMEOUT):
            await tx.start()
            try:
                # All rows in queue order: a later save of the same item wins. Items
                # first: history rows reference them.
                if items:
                    await conn.executemany(_UPSERT, items)
                if history:
                    await conn.executemany(_INSERT_HISTORY, history)
            except Exception as exc:
                # A bad row: roll back (still within the timeout) and let _commit retry
                # saves one by one. A lost session has nothing to roll back; and never
                # after a cancellation, whose await could hang past the timeout.
                if not self._lost(exc):
                    await tx.rollback()
                raise
            await tx.commit()
        self.commits += 1

    # ---------------------------------------------------------------- readers

    async def _read(self, fn: Callable[[_Conn], Awaitable[T]]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        assert self._pool is not None
        try:
            async with (
                self._pool.acquire(timeout=WRITE_TIMEOUT) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await fn(conn)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"read failed: {_describe(exc, self._dsn)}") from None


if TYPE_CHECKING:  # asyncpg's classes are generic in its stubs only
    _Conn = (asyncpg.Connection[asyncpg.Record]
             | asyncpg.pool.PoolConnectionProxy[asyncpg.Record])


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(None)


async def _load_open(conn: _Conn) -> list[WorkItem]:
    rows = await conn.fetch(
        f"SELECT {_ITEM_COLUMNS} FROM items WHERE state IN ({_OPEN_SQL}) "
        "ORDER BY arrived_at, seq")
    histories: dict[str, list[HistoryEntry]] = {row[0]: [] for row in rows}
    if histories:
        # One query for all open items' history, in the same snapshot as the items.
        for item_id, at, event, detail in await conn.fetch(
            "SELECT h.item_id, h.at, h.event, h.detail FROM items i "
            f"JOIN history h ON h.item_id = i.id WHERE i.state IN ({_OPEN_SQL}) "
            "ORDER BY i.arrived_at, i.seq, h.idx"
        ):
            histories[item_id].append(HistoryEntry(at, event, json.loads(detail)))
    return [_from_row(tuple(row), histories[row[0]]) for row in rows]


async def _histories(conn: _Conn, ids: list[str]) -> dict[str, list[HistoryEntry]]:
    out: dict[str, list[HistoryEntry]] = {item_id: [] for item_id in ids}
    if ids:
        for item_id, at, event, detail in await conn.fetch(
            "SELECT item_id, at, event, detail FROM history WHERE item_id = ANY($1::text[]) "
            "ORDER BY item_id, idx", ids
        ):
            out[item_id].append(HistoryEntry(at, event, json.loads(detail)))
    return out


# ------------------------------------------------------------------ connecting


def _settings(dsn: str, name: str, extra: dict[str, str]) -> dict[str, str]:
    settings = dict(extra)
    # An application_name in the URL (the operator's) wins over ours.
    if "application_name" not in dict(parse_qsl(urlsplit(dsn).query)):
        settings["application_name"] = name
    return settings


async def _connect(dsn: str, name: str, extra: dict[str, str],
                   timeout: float) -> asyncpg.Connection[asyncpg.Record]:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout,
                                     server_settings=_settings(dsn, name, extra))
    except Exception as exc:
        # from None: the chained exception is printed with tracebacks and is not
        # scrubbed; its useful text is in ours.
        raise StoreError(
            f"cannot connect to PostgreSQL at {redact_url(dsn)}: {_describe(exc, dsn)}"
        ) from None
    try:
        await _check_version(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def _check_version(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    version = conn.get_server_version()
    if version.major < MIN_SERVER_VERSION:
        raise StoreError(f"PostgreSQL {version.major} is too old: the store needs "
                         f"{MIN_SERVER_VERSION} or newer")


async def _check_client_while_waiting(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """PostgreSQL 14+: while this session waits in a statement (a standby in
    pg_advisory_lock), let the server check every few seconds that we are still there,
    so a dead standby's wait does not linger. Not on every platform: then the server's
    keepalives have to do."""
    if conn.get_server_version().major < 14:
        return
    try:
        await conn.execute("SET client_connection_check_interval = '2s'")
    except asyncpg.PostgresError as exc:
        log.debug("store: client_connection_check_interval not set: %s", exc)


async def _pool(dsn: str) -> asyncpg.Pool[asyncpg.Record]:
    try:
        return await asyncpg.create_pool(
            dsn, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT,
            command_timeout=WRITE_TIMEOUT, server_settings=_settings(dsn, READER_NAME, {}))
    except Exception as exc:
        raise StoreError(
            f"cannot connect to PostgreSQL at {redact_url(dsn)}: {_describe(exc, dsn)}"
        ) from None


async def _migrate(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Bring the schema to len(PG_MIGRATIONS); called with the lock held, so no other
    instance of this database migrates at the same time."""
    async with conn.transaction():
        await conn.execute(_VERSION_TABLE)
    version = int(await conn.fetchval("SELECT version FROM ivr_schema_version"))
    if version > len(PG_MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this program "
            f"({len(PG_MIGRATIONS)}); refusing to touch it"
        )
    for target in range(version + 1, len(PG_MIGRATIONS) + 1):
        async with conn.transaction():
            await conn.execute(PG_MIGRATIONS[target - 1])
            await conn.execute("UPDATE ivr_schema_version SET version = $1", target)
        log.info("store: migrated the PostgreSQL schema to version %d", target)


# ------------------------------------------------------------------ passwords out


def _password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password is None:
        password = dict(parse_qsl(parts.query)).get("password")
    return password


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or ``?password=``) as ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            user = parts.netloc.rpartition("@")[0].partition(":")[0]
            parts = parts._replace(netloc=f"{user}:***@{host}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "password" for k, _ in query):
            parts = parts._replace(query=urlencode(
                [(k, "***" if k == "password" else v) for k, v in query], safe="*"))
        return _scrub(urlunsplit(parts), url)
    except ValueError:
        return "(an unparsable PostgreSQL URL)"


def _scrub(text: str, url: str) -> str:
    """``text`` with every spelling of ``url``'s password replaced by ``***``."""
    password = _password(url)
    if password:
        for spelling in {password, quote(password, safe=""), unquote(password)}:
            if spelling:
                text = text.replace(spelling, "***")
    return text


def _describe(exc: BaseException, url: str) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, TimeoutError):
        text = "timed out"
    return _scrub(" ".join(text.splitlines()), url)


# ------------------------------------------------------------------ probe


def probe_url(url: str) -> str | None:
    """Can the PostgreSQL database at ``url`` be used as the store (``ivr
    check-config``)? None if so, else a one-line reason without the password. Connects
    (within about 5 s), reads the schema version and changes nothing."""
    try:
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            return f"{redact_url(url)} is not a postgresql:// URL"
        reason = _run_sync(_probe(url))
    except Exception as exc:
        reason = f"cannot use PostgreSQL at {redact_url(url)}: {_describe(exc, url)}"
    return None if reason is None else _scrub(" ".join(reason.splitlines()), url)


def _run_sync(coro: Awaitable[T]) -> T:
    """Run ``coro`` to completion from sync code, also when called inside a running
    event loop (then on a thread with a loop of its own)."""
    async def main() -> T:
        return await coro

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="ivr-pg-probe")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _probe(url: str) -> str | None:
    target = redact_url(url)
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT,
                                     server_settings=_settings(url, "ivr-check-config", {}))
    except Exception as exc:
        return f"cannot connect to PostgreSQL at {target}: {_describe(exc, url)}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            try:
                await _check_version(conn)
            except StoreError as exc:
                return f"{target}: {exc}"
            if await conn.fetchval("SELECT to_regclass('ivr_schema_version')") is None:
                # A fresh database: the first open creates the tables.
                schema = await conn.fetchval("SELECT current_schema()")
                if schema is None or not await conn.fetchval(
                        "SELECT has_schema_privilege(current_schema(), 'CREATE')"):
                    user = await conn.fetchval("SELECT current_user")
                    return (f"{target}: user {user!r} may not create the store's tables "
                            f"(in schema {schema!r}); make it the database's owner")
                return None
            version = int(await conn.fetchval("SELECT version FROM ivr_schema_version"))
            if version > len(PG_MIGRATIONS):
                return (f"{target} has database schema version {version}, newer than this "
                        f"program ({len(PG_MIGRATIONS)})")
            return None
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        return f"cannot use PostgreSQL at {target}: {_describe(exc, url)}"
    finally:
        conn.terminate()

