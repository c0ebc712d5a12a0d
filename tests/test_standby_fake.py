"""The standby's life on one PostgreSQL (real, from the rig) and the in-process fake ARI
(fast tier): it waits without touching Asterisk, says so on ``/healthz``, survives its
wait being cut, takes over when the active instance goes, adopts the waiting callers in
their order; an active instance whose session is ended is fenced and stops acting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from ivr.app import Service
from ivr.config import Config
from ivr.domain.items import State
from ivr.pgstore import WRITER_NAME, PgStore
from rig.postgres import PgServer
from rig.sandbox import free_port
from tests.fakeari import FAST_QUEUE, FakeAri
from tests.support.config import write as write_test_config

QUEUE = {"support": {"did": "did-support", "caller_id": "2015550100", **FAST_QUEUE,
                     "max_waiting": 10}}


def config(fake: FakeAri, directory: Path, url: str) -> Config:
    directory.mkdir()
    ari = {"url": fake.url, "user": fake.user, "password": fake.password, "app": fake.app}
    return write_test_config(directory, ari=ari, asterisk_dir="/prompts", queues=QUEUE,
                             store={"url": url},
                             http={"bind": "127.0.0.1", "port": free_port(udp=False),
                                   "api_token": "t0ken-standby"})


async def healthz(cfg: Config) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{cfg.http.port}/healthz"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.json()


@contextlib.asynccontextmanager
async def started(cfg: Config) -> AsyncIterator[tuple[Service, asyncio.Task[None]]]:
    """The service starting in the background (a standby stays in start())."""
    svc = Service(cfg)
    svc.restart_backoff_initial = 0.05
    task = asyncio.create_task(svc.start(http=True, connect_timeout=5))
    try:
        yield svc, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await svc.stop()


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        assert loop.time() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.02)


async def test_a_standby_waits_then_takes_over_and_adopts_the_callers_in_order(
        pg_server: PgServer, pg_dsn: str, tmp_path: Path) -> None:
    async with FakeAri() as fake:
        first_cfg = config(fake, tmp_path / "first", pg_dsn)
        second_cfg = config(fake, tmp_path / "second", pg_dsn)
        async with started(first_cfg) as (first, first_task):
            await asyncio.wait_for(first_task, 10)
            assert (await healthz(first_cfg))[1]["role"] == "active"
            callers = [await fake.caller_enters("support", f"201555014{k}") for k in range(3)]

            async def three_queued() -> bool:
                return len(first.engine.items("support")) == 3

            await until(three_queued, "three callers queued")
            assert first.ctx is not None and await first.ctx.commit()

            async with started(second_cfg) as (second, second_task):
                async def standing_by() -> bool:
                    with contextlib.suppress(aiohttp.ClientError):
                        return await healthz(second_cfg) == (503, {
                            "ok": False, "role": "standby",
                            "reason": "standby: another instance is active"})
                    return False

                await until(standing_by, "standby")
                assert fake.ws_accepted == 1  # the standby has not touched Asterisk
                # Its wait is cut (the server ended its session): it waits again.
                assert isinstance(first.store, PgStore)
                cut = await asyncio.to_thread(
                    pg_server.psql,
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                    "FROM pg_stat_activity WHERE application_name = :'name' "
                    "AND pid <> :'keep'::int",
                    name=WRITER_NAME, keep=str(first.store.backend_pid))
                assert cut == "1"
                await until(standing_by, "standby again")
                assert not first.fenced.is_set() and fake.ws_accepted == 1

                # The active one goes away (its websocket with it).
                await first.stop()
                await asyncio.wait_for(second_task, 15)
                assert second.role == "active"
                line = second.engine.items("support")
                assert [i.channel_id for i in line] == callers
                assert all(i.state is State.WAITING for i in line)
                assert (await healthz(second_cfg))[0] == 200


async def test_an_active_instance_whose_session_ends_is_fenced(
        pg_server: PgServer, pg_dsn: str, tmp_path: Path) -> None:
    async with FakeAri() as fake:
        cfg = config(fake, tmp_path / "only", pg_dsn)
        async with started(cfg) as (svc, task):
            await asyncio.wait_for(task, 10)
            assert svc.ctx is not None
            assert isinstance(svc.store, PgStore)
            await asyncio.to_thread(pg_server.terminate, svc.store.backend_pid)
            await asyncio.wait_for(svc.fenced.wait(), 10)
            assert svc.fenced_reason
            # Nothing more is written: the caller's commit is refused, not half done.
            await fake.caller_enters("support", "2015550150")

            async def refused() -> bool:
                return bool(svc.ctx and svc.ctx.counters.values.get("store_failures"))

            await until(refused, "store refuses")
