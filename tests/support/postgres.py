"""PostgreSQL for the tests: one throwaway cluster per test session (rig/postgres.py), a
fresh database per test.

``pg_server`` (session): the running cluster (``PgServer``: ``terminate()``, ``psql()``,
``dsn`` for the superuser). ``pg_dsn``: the URL of a new empty database owned by the
ordinary role ``ivr``, dropped after the test.

The cluster starts only when a test asks for it. When PostgreSQL cannot be started (the
server binaries are missing, say) the tests that need it FAIL: a skipped test would pass
for a green run without having run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from rig.postgres import PgError, PgServer, start

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = start()
    except PgError as exc:
        pytest.fail(f"these tests need PostgreSQL, which could not be started: {exc}",
                    pytrace=False)
    try:
        yield server
    finally:
        server.stop(remove=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    name = f"test_{next(_databases)}"
    dsn = pg_server.create_database(name)
    yield dsn
    # WITH (FORCE): a test that failed may have left sessions open.
    pg_server.drop_database(name)
