"""R20: a crash loses no confirmed callback.

A child process creates callbacks from several concurrent tasks and prints each one
("<seq> <id>") only after ``save()`` returned — the moment a flow would play the
confirmation. The parent SIGKILLs it at random moments (mid-commit included), several
times over the same database; after each kill every printed callback must be there, in
creation order, and the database must be intact. Both back-ends: SQLite (a file) and
PostgreSQL (a database of the test session's server; the child's session dies with it,
and the next opener waits for its lock until the server has noticed).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ivr.domain import QueueEngine, QueuePolicy, SystemClock
from ivr.pgstore import PgStore
from ivr.store import SqliteStore

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 6
SAVERS = 8


# The child finds its store here (not on its command line: a URL holds a password).
TARGET_ENV = "IVR_TEST_CRASH_STORE"


async def open_store(target: str) -> SqliteStore | PgStore:
    if target.startswith("postgresql://"):
        return await PgStore.open(target)
    return await SqliteStore.open(target)


async def child_main() -> None:
    """Runs in the child. Restores first, as the app does, so seq continues."""
    store = await open_store(os.environ[TARGET_ENV])
    engine = QueueEngine([QueuePolicy("crash")], SystemClock())
    engine.restore(await store.load_open())
    await store.save(engine.drain_changes())
    pid = os.getpid()

    async def saver(k: int) -> None:
        n = 0
        while True:
            item = engine.add_callback("crash", f"07{pid}{k}{n:06d}")
            await store.save(engine.drain_changes())
            # Confirmation point: the write is durable now.
            sys.stdout.write(f"{item.seq} {item.id}\n")
            sys.stdout.flush()
            n += 1

    await asyncio.gather(*(saver(k) for k in range(SAVERS)))


def run_and_kill(target: str, delay: float) -> list[tuple[int, str]]:
    lines: list[str] = []
    first = threading.Event()
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio; from tests.test_store_crash import child_main; "
            "asyncio.run(child_main())",
        ],
        cwd=REPO,
        env={**os.environ, TARGET_ENV: target},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None

        def reader() -> None:
            # Read continuously so a full pipe never slows the child down.
            for line in stdout:
                lines.append(line)
                first.set()
            first.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        assert first.wait(30), "child printed nothing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        thread.join(10)
        errors = stderr.read()
    assert proc.returncode == -signal.SIGKILL, errors
    confirmed = []
    for line in lines:
        if line.endswith("\n"):  # a line cut by the kill was never confirmed
            seq, item_id = line.split()
            confirmed.append((int(seq), item_id))
    return confirmed


async def load(target: str) -> list[tuple[int, str]]:
    store = await open_store(target)
    try:
        items = await store.load_open()
    finally:
        await store.close()
    # Intact: every item came with its first history entry (same transaction).
    assert all(item.history and item.history[0].event == "callback_requested"
               for item in items)
    return [(item.seq, item.id) for item in items]


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "crash.db")
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


def test_sigkill_loses_no_confirmed_callback(target: str) -> None:
    rng = random.Random()
    confirmed: list[tuple[int, str]] = []
    for _ in range(ROUNDS):
        confirmed += run_and_kill(target, rng.uniform(0.0, 0.3))
        stored = asyncio.run(load(target))
        stored_ids = {item_id for _, item_id in stored}
        missing = [c for c in confirmed if c[1] not in stored_ids]
        assert not missing, f"{len(missing)} confirmed callbacks lost"
        # Queue order (arrived_at, seq) is creation order, across restarts too.
        seqs = [seq for seq, _ in stored]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        stored_seq = {item_id: seq for seq, item_id in stored}
        assert all(stored_seq[item_id] == seq for seq, item_id in confirmed)
    assert len(confirmed) > ROUNDS  # every round confirmed something
    if not target.startswith("postgresql://"):
        conn = sqlite3.connect(target)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
