"""R20 under a fault: the disk fills up just before a caller presses 1.

The store cannot commit the callback, so nothing is promised: the caller hears that the
request could not be taken and keeps waiting at the same place; no callback exists in
memory or on disk, so nobody is ever dialled on it. Once there is room again, the next 1
commits and confirms as usual. Real Asterisk, real SIP, a real full filesystem (a tiny
tmpfs holding the store).
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ivr.app import running
from ivr.domain.items import Kind, State
from rig.sandbox import AsteriskInstance
from tests.peers import SipCaller
from tests.support.config import SHORT, write_config
from tests.support.observer import AriObserver
from tests.support.observing import caller_channel, is_playback, playbacks
from tests.support.waiting import until


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write until the filesystem refuses (ENOSPC)."""
    block = b"\0" * 4096
    with path.open("wb", buffering=0) as fh:
        while True:
            try:
                fh.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


def stored(db_path: Path, number: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT kind, state FROM items WHERE number = ?",
                          (number,)).fetchall()


async def test_disk_full_at_press_1_keeps_the_caller_waiting_and_promises_nothing(
    asterisk: AsteriskInstance, ari_observer: AriObserver, tmp_path: Path, tiny_disk: Path,
    sip_caller: Callable[..., SipCaller],
) -> None:
    db_path = tiny_disk / "ivr.sqlite3"
    cfg = write_config(
        asterisk, tmp_path,
        {"q7120": {"max_waiting": None, "max_ewt": "30s", "first_offer_after": "2s",
                   "repeat_offer_every": "60s", "prompts": SHORT}},
        store={"path": str(db_path)},
    )
    # First 1 at 4 s (disk full), second at 16 s: after "could not take your request"
    # (7.8 s) and back on hold; a 1 at any time after the first offer counts (R5).
    # SIP INFO digits: sipp replays an RTP pcap only once per call.
    caller = sip_caller("7120", caller="2015550120", infos=[(4.0, "1"), (16.0, "1")],
                        max_duration=40)
    filler = tiny_disk / "filler"
    async with running(cfg) as svc:
        caller.start()
        chan, _ = await caller_channel(ari_observer, "2015550120")
        await until(lambda: stored(db_path, "+12015550120") == [("inbound", "waiting")])
        fill(filler)

        failed = await ari_observer.wait_for(
            lambda e: is_playback(e, "PlaybackStarted", chan, "en/request_failed"), 20)
        assert failed
        # Nothing promised: no confirmation, still a live caller at the same place, and
        # no callback in memory or on disk.
        assert playbacks(ari_observer, chan, "en/minutes") == []
        [item] = svc.engine.items("q7120")
        assert (item.kind, item.state, item.channel_id) == (Kind.INBOUND, State.WAITING, chan)
        assert svc.engine.open_callback_for("q7120", "+12015550120") is None
        assert stored(db_path, "+12015550120") == [("inbound", "waiting")]
        assert svc.ctx is not None and svc.ctx.counters.values["callback_not_stored"] == 1
        # Back on hold after the apology (R3).
        await ari_observer.wait_for(
            lambda e: is_playback(e, "PlaybackFinished", chan, "en/request_failed"), 20)

        filler.unlink()  # room again
        await ari_observer.wait_for(
            lambda e: is_playback(e, "PlaybackFinished", chan, "en/minutes"), 30)
        assert (await caller.wait(30)).hung_up_by == "them"
        assert stored(db_path, "+12015550120") == [("callback", "callback_pending")]
        [cb] = svc.engine.items("q7120")
        assert cb.id == item.id and cb.kind == Kind.CALLBACK
        events = [h.event for h in cb.history]
        assert events[-3:] == ["converted_to_callback", "callback_not_stored",
                               "converted_to_callback"]
    # Every change reached the disk in the end, history included.
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        history = [e for (e,) in db.execute(
            "SELECT event FROM history WHERE item_id = ? ORDER BY idx", (cb.id,))]
    assert history == events
