"""Durable work items (SPEC R20, R21): one small interface, SQLite behind it for now.

``save()`` returns only once the rows are committed with ``synchronous=FULL`` in WAL
mode, i.e. fsynced: a flow awaits it before the caller hears "you have requested a
callback", so a crash (even kill -9, even power loss on honest disks) loses no
confirmed callback.

Threading: sqlite3 blocks, the event loop must not. All database work runs on ONE
worker thread that owns the connection, fed by a FIFO queue. While a commit (fsync) is
running, new ``save()`` calls queue up; the worker then writes all of them in the next
transaction and resolves each caller's future after that commit (group commit). FIFO
also makes ``save([])`` a barrier: it resolves only after every save queued before it
has committed — which is what a flow wants when another flow's ``drain_changes()``
happened to carry its change.

Rows are serialised in ``save()`` itself, on the event loop thread, so the engine may
keep mutating the items while the write is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from ivr.domain.items import OPEN_STATES, HistoryEntry, Kind, State, WorkItem

T = TypeVar("T")

log = logging.getLogger(__name__)

# The store holds customers' phone numbers: owner only. SQLite creates the -wal and -shm
# files with the main file's mode, so creating that one 0600 covers all three.
FILE_MODE = 0o600
DIR_MODE = 0o700
_SIDE_FILES = ("-wal", "-shm")

# Each entry moves the schema from version i to i + 1 (PRAGMA user_version). Append
# only; never edit a released entry.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE items (
        id               TEXT PRIMARY KEY,
        queue            TEXT NOT NULL,
        kind             TEXT NOT NULL,
        state            TEXT NOT NULL,
        arrived_at       REAL NOT NULL,
        seq              INTEGER NOT NULL,
        number           TEXT,
        channel_id       TEXT,
        attempts         INTEGER NOT NULL,
        next_eligible_at REAL NOT NULL,
        offered_to       TEXT,
        declined_by      TEXT NOT NULL,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        expires_at       REAL,
        predicted_wait   REAL
    );
    CREATE INDEX items_open ON items (arrived_at, seq)
        WHERE state IN ('waiting', 'offered', 'callback_pending', 'dialling');
    CREATE TABLE history (
        item_id TEXT NOT NULL REFERENCES items (id),
        idx     INTEGER NOT NULL,
        at      REAL NOT NULL,
        event   TEXT NOT NULL,
        detail  TEXT NOT NULL,
        PRIMARY KEY (item_id, idx)
    ) WITHOUT ROWID;
    CREATE TRIGGER history_no_update BEFORE UPDATE ON history
        BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
    CREATE TRIGGER history_no_delete BEFORE DELETE ON history
        BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
    """,
    # The day's outcome funnel reads history by time.
    """
    CREATE INDEX history_at ON history (at, event);
    CREATE INDEX items_closed ON items (kind, updated_at);
    """,
    # The caller's language travels with the item (the callback speaks it).
    """
    ALTER TABLE items ADD COLUMN language TEXT NOT NULL DEFAULT '';
    """,
    # Several Asterisk nodes: the node a caller's channel is on travels with the item.
    """
    ALTER TABLE items ADD COLUMN node TEXT NOT NULL DEFAULT '';
    """,
]

# Spelled exactly as in the partial index items_open: SQLite uses a partial index only
# when the query's WHERE repeats the index's terms, IN-list order included.
_OPEN_SQL = "'waiting', 'offered', 'callback_pending', 'dialling'"
assert {State(v.strip(" '")) for v in _OPEN_SQL.split(",")} == OPEN_STATES
_ITEM_COLUMNS = (
    "id, queue, kind, state, arrived_at, seq, number, channel_id, attempts, "
    "next_eligible_at, offered_to, declined_by, created_at, updated_at, expires_at, "
    "predicted_wait, language, node"
)
_UPSERT = (
    f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES ({', '.join('?' * 18)}) "
    "ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, kind = excluded.kind, "
    "state = excluded.state, arrived_at = excluded.arrived_at, seq = excluded.seq, "
    "number = excluded.number, channel_id = excluded.channel_id, "
    "attempts = excluded.attempts, next_eligible_at = excluded.next_eligible_at, "
    "offered_to = excluded.offered_to, declined_by = excluded.declined_by, "
    "created_at = excluded.created_at, updated_at = excluded.updated_at, "
    "expires_at = excluded.expires_at, predicted_wait = excluded.predicted_wait, "
    "language = excluded.language, node = excluded.node"
)
# OR IGNORE: a save that failed and is retried may resend entries already written.
_INSERT_HISTORY = (
    "INSERT OR IGNORE INTO history (item_id, idx, at, event, detail) VALUES (?, ?, ?, ?, ?)"
)

# Bound one transaction so a burst does not delay the first saver indefinitely.
MAX_GROUP = 2000

ItemRow = tuple[
    str, str, str, str, float, int, str | None, str | None, int, float, str | None, str,
    float, float, float | None, float | None, str, str,
]  # fmt: skip
HistoryRow = tuple[str, int, float, str, str]


class StoreError(Exception):
    pass


class Store(Protocol):
    async def save(self, items: Sequence[WorkItem]) -> None:
        """Persist items (state and new history); returns once durable."""
        ...

    async def load_open(self) -> list[WorkItem]:
        """Open items with their history, in queue order (arrived_at, seq)."""
        ...

    async def load(self, item_id: str) -> WorkItem | None: ...

    async def funnel(self, since: float) -> dict[str, dict[str, int]]:
        """Queue -> history event -> distinct items with that event at or after
        ``since`` (the consoles' outcome funnel)."""
        ...

    async def recent_callbacks(self, limit: int) -> list[WorkItem]:
        """Closed callbacks, most recently closed first, with their history."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Save:
    items: list[ItemRow]
    history: list[HistoryRow]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    item_ids: list[str]


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP = object()


class SqliteStore(Store):
    """SQLite in WAL mode, ``synchronous=FULL``, one writer thread, group commit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Use ``await SqliteStore.open(path)``: opening runs migrations on the worker.
        self.path = os.fspath(path)
        self._jobs: queue.SimpleQueue[_Save | _Call | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ivr-store", daemon=True)
        self._closed = False
        # History entries already sent, per item: only new entries are written. Touched
        # on the event loop thread only.
        self._history_sent: dict[str, int] = {}
        self.commits = 0  # transactions committed (group commit makes this < saves)

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SqliteStore:
        store = cls(path)
        store._thread.start()
        try:
            await store._call(_init_db)
        except BaseException:
            await store.close()
            raise
        return store

    # ---------------------------------------------------------------- public API

    async def save(self, items: Sequence[WorkItem]) -> None:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        rows, history, ids = _rows_to_send(items, self._history_sent)
        future: asyncio.Future[None] = loop.create_future()
        self._jobs.put(_Save(rows, history, loop, future, ids))
        try:
            await future
        except BaseException:
            # Unknown whether the rows made it: resend all history next time.
            for item_id in ids:
                self._history_sent.pop(item_id, None)
            raise

    async def load_open(self) -> list[WorkItem]:
        items: list[WorkItem] = await self._call(_load_open)
        for item in items:
            self._history_sent[item.id] = len(item.history)
        return items

    async def load(self, item_id: str) -> WorkItem | None:
        item: WorkItem | None = await self._call(lambda conn: _load_one(conn, item_id))
        return item

    async def funnel(self, since: float) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = await self._call(lambda c: _funnel(c, since))
        return result

    async def recent_callbacks(self, limit: int) -> list[WorkItem]:
        items: list[WorkItem] = await self._call(lambda c: _recent_callbacks(c, limit))
        return items

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # ---------------------------------------------------------------- worker side

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Call(fn, loop, future))
        return await future

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        pending: _Save | _Call | object | None = None
        while True:
            job = pending if pending is not None else self._jobs.get()
            pending = None
            if job is _STOP:
                break
            if isinstance(job, _Call):
                try:
                    if conn is None:
                        conn = _connect(self.path)
                    _resolve(job.loop, job.future, job.fn(conn), None)
                except BaseException as exc:  # the caller gets every failure
                    _resolve(job.loop, job.future, None, exc)
                continue
            assert isinstance(job, _Save)
            batch = [job]
            while len(batch) < MAX_GROUP:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Save):
                    batch.append(nxt)
                else:
                    pending = nxt  # keep FIFO: run it right after this commit
                    break
            if conn is None:
                err = StoreError("store not initialised")
                for s in batch:
                    _resolve(s.loop, s.future, None, err)
                continue
            self._commit(conn, batch)
        if conn is not None:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Save]) -> None:
        # Exception, not just sqlite3.Error: whatever happens, every waiter must be
        # resolved and the worker must live on, or flows would hang on save() forever.
        try:
            _write(conn, batch)
        except Exception:
            # One bad save must not fail its neighbours: retry each on its own.
            for s in batch:
                try:
                    _write(conn, [s])
                except Exception as exc:
                    _resolve(s.loop, s.future, None, StoreError(f"save failed: {exc}"))
                else:
                    self.commits += 1
                    _resolve(s.loop, s.future, None, None)
            return
        self.commits += 1
        for s in batch:
            _resolve(s.loop, s.future, None, None)


def _rows_to_send(
    items: Sequence[WorkItem], history_sent: dict[str, int]
) -> tuple[list[ItemRow], list[HistoryRow], list[str]]:
    """Serialise ``items`` for a save: every item's row and only the history entries not
    sent before (``history_sent``: item id -> entries already sent, updated here). Shared
    by both back-ends (ivr/pgstore.py). If the save then fails, the caller must forget
    the returned ids in ``history_sent`` so the next save resends all their history."""
    rows: list[ItemRow] = []
    history: list[HistoryRow] = []
    ids: list[str] = []
    for item in items:
        rows.append(_item_row(item))
        sent = history_sent.get(item.id, 0)
        for idx in range(sent, len(item.history)):
            entry = item.history[idx]
            history.append(
                (item.id, idx, entry.at, entry.event, json.dumps(entry.detail, sort_keys=True))
            )
        if item.is_open:
            history_sent[item.id] = len(item.history)
        else:
            # Closed items are not saved again in normal life; forget them so the map
            # stays as small as the open set. A later save resends, ignoring duplicates.
            history_sent.pop(item.id, None)
        ids.append(item.id)
    return rows, history, ids


def _resolve(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    # RuntimeError: the loop is closed, nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)


def _make_dirs(directory: str) -> None:
    """Create ``directory`` and any missing parents, each ``DIR_MODE`` (umask permitting)."""
    missing: list[str] = []
    d = os.path.abspath(directory)
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)


def _secure_files(path: str) -> None:
    """Create the database file ``FILE_MODE`` if missing (before SQLite does, with the
    umask's mode); tighten an existing database, -wal or -shm that group or others may
    read."""
    _make_dirs(os.path.dirname(path) or ".")
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.close(fd)
    for name in (path, *(path + suffix for suffix in _SIDE_FILES)):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            log.warning("store file %s had mode %04o (group/other access); setting %04o",
                        name, stat.S_IMODE(st.st_mode), FILE_MODE)
            os.chmod(name, FILE_MODE)


def _connect(path: str) -> sqlite3.Connection:
    _secure_files(path)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, no implicit transactions.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot enable WAL (journal_mode={mode})")
    # FULL: in WAL mode NORMAL may lose the last transactions on power loss; FULL
    # fsyncs the WAL at every commit, which R20 needs.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def probe(path: str | os.PathLike[str]) -> str | None:
    """Can ``path`` be used as the store? None if so, else a one-line reason. Read only:
    creates nothing, and opens an existing database read-only (``ivr check-config``)."""
    try:
        reason = _probe(Path(path))
    except (OSError, ValueError, sqlite3.Error) as exc:
        reason = f"cannot use {os.fspath(path)!r} as the store: {exc}"
    return None if reason is None else " ".join(reason.splitlines())


def _probe(path: Path) -> str | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return _probe_dir(path.absolute().parent)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} exists and is not a regular file"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable by this user"
    reason = _probe_dir(path.absolute().parent)
    if reason is not None:
        return reason
    sides: list[str] = []
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        try:
            side_st = side.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(side_st.st_mode) or not os.access(side, os.R_OK | os.W_OK):
            return f"{side} is not a regular file readable and writable by this user"
        sides.append(suffix)
    euid = os.geteuid() if hasattr(os, "geteuid") else 0
    for name in (path, *(Path(f"{path}{s}") for s in sides)):
        name_st = name.stat()
        if name_st.st_mode & 0o077 and euid not in (0, name_st.st_uid):
            return (f"{name} has mode {stat.S_IMODE(name_st.st_mode):04o} and belongs to "
                    f"another user, so it cannot be set to {FILE_MODE:04o}")
    if st.st_size == 0:
        return None  # SQLite makes a database of an empty file
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(b"SQLite format 3\x00"):
        return f"{path} is not a SQLite database"
    # A read-only connection to a WAL database whose -wal/-shm are missing would create
    # them; then the main file is the whole database and ``immutable`` reads it as is.
    wal = len(header) > 19 and header[18] == 2
    params = "mode=ro&immutable=1" if wal and len(sides) < 2 else "mode=ro"
    uri = f"file:{quote(os.fspath(path.absolute()))}?{params}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        return f"cannot open {path}: {exc}"
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            return f"{path} is damaged (quick_check: {check[0] if check else 'no answer'})"
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return f"{path} is not a usable SQLite database: {exc}"
    finally:
        conn.close()
    if version > len(MIGRATIONS):
        return (f"{path} has database schema version {version}, newer than this program "
                f"({len(MIGRATIONS)})")
    return None


def _probe_dir(directory: Path) -> str | None:
    """The store's directory exists and is writable, or can be created."""
    d = directory
    while True:
        try:
            st = d.stat()
        except (FileNotFoundError, NotADirectoryError):
            if d.parent == d:
                return f"{directory} cannot be created"
            d = d.parent
            continue
        break
    if not stat.S_ISDIR(st.st_mode):
        return f"{d} is not a directory"
    if not os.access(d, os.W_OK | os.X_OK):
        what = "create files in" if d == directory else f"create {directory} in"
        return f"cannot {what} {d}: not writable by this user"
    return None


def _init_db(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this program "
            f"({len(MIGRATIONS)}); refusing to touch it"
        )
    for target in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows about
    BEGIN...END in triggers); executescript() would commit on its own."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise StoreError(f"incomplete SQL in migration: {current.strip()[:60]}")
    return statements


def _write(conn: sqlite3.Connection, batch: list[_Save]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for s in batch:
            conn.executemany(_UPSERT, s.items)
            conn.executemany(_INSERT_HISTORY, s.history)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _item_row(item: WorkItem) -> ItemRow:
    return (
        item.id,
        item.queue,
        item.kind.value,
        item.state.value,
        item.arrived_at,
        item.seq,
        item.number,
        item.channel_id,
        item.attempts,
        item.next_eligible_at,
        item.offered_to,
        json.dumps(sorted(item.declined_by)),
        item.created_at,
        item.updated_at,
        item.expires_at,
        item.predicted_wait,
        item.language,
        item.node,
    )


def _from_row(row: sqlite3.Row | tuple[Any, ...], history: list[HistoryEntry]) -> WorkItem:
    return WorkItem(
        id=row[0],
        queue=row[1],
        kind=Kind(row[2]),
        state=State(row[3]),
        arrived_at=row[4],
        seq=row[5],
        number=row[6],
        channel_id=row[7],
        attempts=row[8],
        next_eligible_at=row[9],
        offered_to=row[10],
        declined_by=set(json.loads(row[11])),
        created_at=row[12],
        updated_at=row[13],
        expires_at=row[14],
        predicted_wait=row[15],
        language=row[16],
        node=row[17],
        history=history,
    )


def _load_open(conn: sqlite3.Connection) -> list[WorkItem]:
    rows = conn.execute(
        f"SELECT {_ITEM_COLUMNS} FROM items WHERE state IN ({_OPEN_SQL}) ORDER BY arrived_at, seq"
    ).fetchall()
    histories: dict[str, list[HistoryEntry]] = {row[0]: [] for row in rows}
    if histories:
        # One query for all open items' history. CROSS JOIN pins the join order (SQLite
        # never reorders it): walk the open items by the partial index and look their
        # history up by primary key, so start-up cost follows the open set, not the
        # ever-growing history of closed items.
        for item_id, at, event, detail in conn.execute(
            "SELECT h.item_id, h.at, h.event, h.detail FROM items i "
            f"CROSS JOIN history h ON h.item_id = i.id WHERE i.state IN ({_OPEN_SQL}) "
            "ORDER BY i.arrived_at, i.seq, h.idx"
        ):
            histories[item_id].append(HistoryEntry(at, event, json.loads(detail)))
    return [_from_row(row, histories[row[0]]) for row in rows]


def _load_one(conn: sqlite3.Connection, item_id: str) -> WorkItem | None:
    row = conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        return None
    history = [
        HistoryEntry(at, event, json.loads(detail))
        for at, event, detail in conn.execute(
            "SELECT at, event, detail FROM history WHERE item_id = ? ORDER BY idx", (item_id,)
        )
    ]
    return _from_row(row, history)


#: the history events the funnel counts
FUNNEL_EVENTS = ("callback_offered", "converted_to_callback", "callback_requested",
                 "callback_scheduled", "dial_started", "callback_connected", "failed",
                 "expired", "cancelled")


def _funnel(conn: sqlite3.Connection, since: float) -> dict[str, dict[str, int]]:
    marks = ", ".join("?" * len(FUNNEL_EVENTS))
    out: dict[str, dict[str, int]] = {}
    for queue_name, event, n in conn.execute(
        "SELECT i.queue, h.event, COUNT(DISTINCT h.item_id) FROM history h "
        f"JOIN items i ON i.id = h.item_id WHERE h.at >= ? AND h.event IN ({marks}) "
        "GROUP BY i.queue, h.event",
        (since, *FUNNEL_EVENTS),
    ):
        out.setdefault(queue_name, {})[event] = n
    return out


def _recent_callbacks(conn: sqlite3.Connection, limit: int) -> list[WorkItem]:
    rows = conn.execute(
        f"SELECT {_ITEM_COLUMNS} FROM items WHERE kind = 'callback' AND state NOT IN "
        f"({_OPEN_SQL}) ORDER BY updated_at DESC LIMIT ?", (limit,)
    ).fetchall()
    out = []
    for row in rows:
        history = [
            HistoryEntry(at, event, json.loads(detail))
            for at, event, detail in conn.execute(
                "SELECT at, event, detail FROM history WHERE item_id = ? ORDER BY idx",
                (row[0],))
        ]
        out.append(_from_row(row, history))
    return out
