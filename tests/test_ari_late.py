"""Asterisk answering late: a REST request that times out is checked, not failed.

A saturated Asterisk runs channel commands late (in the load benchmark at 750 callers on
two cores, `answer`, music on hold and hang-ups came back after more than 10 s). A
timeout leaves the outcome unknown, so the client asks how things stand (a GET, which
Asterisk serves from its cache) and sends a command that is safe to repeat again, for
up to ``patience`` seconds; only then does the timeout count as a failure. The service
keeps a caller whose channel is fine.

Against the fake ARI (``tests/fakeari.py``): ``fake.hold`` keeps requests unanswered
until the test releases them (then gives the normal answer, and its effect), so every
step here waits for an event (a request arriving, a task ending), never for a time.
Timings are the client's configuration, shortened for tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ivr import ari
from ivr.config import ConfigError, loads
from ivr.domain.items import Kind, State
from tests.fakeari import FakeAri, service_on

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text()
CALLER = "2015550122"

#: a client that times out quickly and is patient for far longer than any test step
PATIENT: dict[str, Any] = {"request_timeout": 0.2, "patience": 30.0}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        yield f


async def nth_request(fake: FakeAri, method: str, path: str, n: int) -> None:
    """Until the fake has received ``n`` requests ``method path``."""
    await fake.wait_for(lambda: len(fake.calls(method, path)) >= n, 10,
                        f"{n} x {method} {path}")


def methods(fake: FakeAri, path: str) -> list[str]:
    return [r.method for r in fake.calls("*", path)]


# ------------------------------------------------------------------ the client


async def test_an_answer_that_times_out_is_sent_again_until_done(fake: FakeAri) -> None:
    chan = await fake.caller_enters("support", CALLER)
    held = fake.hold("POST", f"/channels/{chan}/answer")
    client = fake.client(**PATIENT)
    try:
        task = asyncio.create_task(client.answer(chan))
        # Timed out, checked (still ringing), sent again: not failed.
        await nth_request(fake, "POST", f"/channels/{chan}/answer", 2)
        assert fake.calls("GET", f"/channels/{chan}")
        assert not task.done()
        held.release()  # Asterisk gets to it: the channel is answered
        await asyncio.wait_for(task, 10)
    finally:
        await client.close()
    assert fake.channels[chan]["state"] == "Up"
    assert fake.hung_up == []
    # Every attempt after a check: POST, GET, POST, ...
    seen = methods(fake, f"/channels/{chan}*")
    assert seen[:3] == ["POST", "GET", "POST"]


async def test_an_answer_done_after_all_is_not_sent_again(fake: FakeAri) -> None:
    """Asterisk answered the channel but its answer to our request is stuck: the check
    sees the channel up, and that is the end of it."""
    chan = await fake.caller_enters("support", CALLER)
    fake.channels[chan]["state"] = "Up"
    fake.hold("POST", f"/channels/{chan}/answer")
    client = fake.client(**PATIENT)
    try:
        await asyncio.wait_for(client.answer(chan), 10)
    finally:
        await client.close()
    assert methods(fake, f"/channels/{chan}*") == ["POST", "GET"]


async def test_music_that_times_out_is_sent_again(fake: FakeAri) -> None:
    chan = await fake.caller_enters("support", CALLER)
    fake.hold("POST", f"/channels/{chan}/moh", times=1)  # the first one never answers
    client = fake.client(**PATIENT)
    try:
        await asyncio.wait_for(client.start_moh(chan), 10)
    finally:
        await client.close()
    assert methods(fake, f"/channels/{chan}*") == ["POST", "GET", "POST"]
    assert [r.status for r in fake.calls("POST", f"/channels/{chan}/moh")] == [0, 204]


async def test_a_timed_out_command_on_a_gone_channel_is_not_found(fake: FakeAri) -> None:
    """The check finds the channel gone: the command raises ``AriNotFound``, as it
    would have without the timeout (flows treat it as the caller gone)."""
    chan = await fake.caller_enters("support", CALLER)
    fake.hold("POST", f"/channels/{chan}/moh")
    client = fake.client(**PATIENT)
    try:
        task = asyncio.create_task(client.start_moh(chan))
        await nth_request(fake, "POST", f"/channels/{chan}/moh", 1)
        await fake.caller_hangs_up(chan)
        with pytest.raises(ari.AriNotFound):
            await asyncio.wait_for(task, 10)
    finally:
        await client.close()


async def test_a_hang_up_that_times_out_is_done_once_the_channel_is_gone(
    fake: FakeAri,
) -> None:
    chan = await fake.caller_enters("support", CALLER)
    fake.hold("DELETE", f"/channels/{chan}")
    client = fake.client(**PATIENT)
    try:
        task = asyncio.create_task(client.hangup(chan))
        await nth_request(fake, "DELETE", f"/channels/{chan}", 1)
        # The channel goes (Asterisk got to the hang-up, or the caller hung up): the
        # next check finds it gone, and the hang-up is done.
        await fake.caller_hangs_up(chan)
        await asyncio.wait_for(task, 10)
    finally:
        await client.close()
    assert fake.calls("GET", f"/channels/{chan}")[-1].status == 404


async def test_a_playback_that_times_out_is_checked_by_its_id() -> None:
    async with FakeAri(playback_duration=60.0) as fake:
        chan = await fake.caller_enters("support", CALLER)
        client = fake.client(**PATIENT)
        try:
            # Not created (the request is stuck before Asterisk took it): sent again
            # with the same id once the channel is known to be there.
            fake.hold("POST", f"/channels/{chan}/play/*", times=1)
            pb = await asyncio.wait_for(client.play(chan, "sound:x", playback_id="pb-1"), 10)
            assert pb.id == "pb-1" and pb.channel_id == chan
            assert methods(fake, "*pb-1") == ["POST", "GET", "POST"]
            # Created, only our answer is stuck: found, not played twice.
            other = fake.client(request_timeout=5.0, patience=0)
            try:
                await other.play(chan, "sound:y", playback_id="pb-2")  # Asterisk made it
            finally:
                await other.close()
            fake.hold("POST", f"/channels/{chan}/play/*", times=1)
            pb2 = await asyncio.wait_for(client.play(chan, "sound:y", playback_id="pb-2"), 10)
            assert pb2.id == "pb-2" and pb2.media_uri == "sound:y"
            assert methods(fake, "*pb-2") == ["POST", "POST", "GET"]
        finally:
            await client.close()


async def test_a_playback_stop_that_times_out_is_checked() -> None:
    """Still playing after a timeout: the stop is sent again. Once Asterisk gets to
    them, one stop stops it and the repeats find it gone: done, not an error."""
    async with FakeAri(playback_duration=60.0) as fake:
        chan = await fake.caller_enters("support", CALLER)
        client = fake.client(**PATIENT)
        try:
            await client.play(chan, "sound:x", playback_id="pb-1")
            held = fake.hold("DELETE", "/playbacks/pb-1")
            task = asyncio.create_task(client.stop_playback("pb-1"))
            await nth_request(fake, "DELETE", "/playbacks/pb-1", 2)
            assert fake.calls("GET", "/playbacks/pb-1")[0].status == 200
            held.release()
            await asyncio.wait_for(task, 10)
        finally:
            await client.close()
        assert "pb-1" not in fake.playbacks


async def test_patience_runs_out_then_the_timeout_is_a_failure(fake: FakeAri) -> None:
    """Asterisk never answers: after ``patience`` the command fails with
    ``AriTimeout`` (an ``AriUnavailable``), as a request without patience does at its
    first timeout."""
    chan = await fake.caller_enters("support", CALLER)
    fake.hold("POST", f"/channels/{chan}/answer")
    client = fake.client(request_timeout=0.1, patience=0.3)
    try:
        with pytest.raises(ari.AriTimeout) as late:
            await client.answer(chan)
        assert late.value.status == 0
        assert len(fake.calls("POST", f"/channels/{chan}/answer")) >= 2
        impatient = fake.client(request_timeout=0.1, patience=0)
        try:
            with pytest.raises(ari.AriUnavailable):
                await impatient.answer(chan)
        finally:
            await impatient.close()
    finally:
        await client.close()


# ------------------------------------------------------------------ the service


async def test_a_caller_answered_late_is_kept(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's answer stays unanswered across several timeouts: the service checks
    and asks again instead of hanging up, and once Asterisk gets to it the caller is
    queued, hears music and is offered a callback like anyone else."""
    async with service_on(fake, tmp_path, ari=PATIENT):
        victim = fake.new_channel_id()
        held = fake.hold("POST", f"/channels/{victim}/answer")
        await fake.caller_enters("support", CALLER, channel_id=victim)
        await nth_request(fake, "POST", f"/channels/{victim}/answer", 3)
        held.release()
        await fake.wait_for_request("POST", f"/channels/{victim}/moh")
        other = await fake.caller_enters("support", "2015550123")  # overflow: offers
        await fake.wait_for_request("POST", f"/channels/{other}/moh")
        await fake.wait_for_request("POST", f"/channels/{victim}/play/*")
        assert fake.channels[victim]["state"] == "Up"
        assert not fake.calls("DELETE", f"/channels/{victim}")
        assert victim not in fake.hung_up
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


async def test_a_caller_whose_music_is_late_is_kept(fake: FakeAri, tmp_path: Path) -> None:
    async with service_on(fake, tmp_path, ari=PATIENT) as (svc, _):
        victim = fake.new_channel_id()
        held = fake.hold("POST", f"/channels/{victim}/moh")
        await fake.caller_enters("support", CALLER, channel_id=victim)
        await nth_request(fake, "POST", f"/channels/{victim}/moh", 2)
        held.release()
        other = await fake.caller_enters("support", "2015550123")
        await fake.wait_for_request("POST", f"/channels/{other}/moh")
        await fake.wait_for_request("POST", f"/channels/{victim}/play/*")
        items = [i for q in svc.cfg.queues for i in svc.engine.items(q)
                 if i.channel_id == victim]
        assert len(items) == 1 and items[0].state == State.WAITING
        assert not fake.calls("DELETE", f"/channels/{victim}")


async def test_a_late_hang_up_after_the_confirmation_is_no_crash(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The callback is committed and confirmed; Asterisk is slow to hang the caller up:
    the hang-up is checked and sent again, the flow ends cleanly (no crash, no second
    clean-up), and the callback stays in the queue."""
    async with service_on(fake, tmp_path, ari=PATIENT) as (svc, _):
        victim = fake.new_channel_id()
        held = fake.hold("DELETE", f"/channels/{victim}")
        await fake.caller_enters("support", CALLER, channel_id=victim)
        await fake.caller_enters("support", "2015550123")
        await fake.wait_for_request("POST", f"/channels/{victim}/play/*")
        await fake.dtmf(victim, "1")
        await nth_request(fake, "DELETE", f"/channels/{victim}", 2)
        held.release()
        await fake.wait_for(lambda: victim in fake.hung_up, 10, "the victim hung up")
        session = svc.switchboard.session_for(victim) if svc.switchboard else None
        if session is not None:
            await asyncio.wait_for(session.ended.wait(), 10)
        callbacks = [i for q in svc.cfg.queues for i in svc.engine.items(q)
                     if i.kind == Kind.CALLBACK and i.state == State.CALLBACK_PENDING]
        assert len(callbacks) == 1
    assert not [r for r in caplog.records
                if r.levelno >= logging.ERROR and "ivr.flows" in r.name]


# ------------------------------------------------------------------ configuration


def test_timeouts_are_configuration() -> None:
    cfg = loads(EXAMPLE, base_dir=REPO, env={})
    assert cfg.ari.request_timeout == 10 and cfg.ari.give_up_after == 60
    text = EXAMPLE.replace("request_timeout: 10s", "request_timeout: 3s").replace(
        "give_up_after: 60s", "give_up_after: 2m")
    cfg = loads(text, base_dir=REPO, env={})
    assert cfg.ari.request_timeout == 3 and cfg.ari.give_up_after == 120
    # Without the keys: the defaults.
    bare = EXAMPLE.replace("  request_timeout: 10s\n", "").replace("  give_up_after: 60s\n", "")
    assert loads(bare, base_dir=REPO, env={}).ari.give_up_after == 60
    for bad in ("request_timeout: 0s", "request_timeout: soon", "give_up_after: 2h"):
        key = bad.split(":")[0]
        with pytest.raises(ConfigError, match=f"ari.{key}"):
            loads(EXAMPLE.replace(f"{key}: {'10s' if 'request' in key else '60s'}", bad),
                  base_dir=REPO, env={})
