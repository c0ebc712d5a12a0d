"""Questions asked of the independent ARI observer (``support/observer.py``): what
Asterisk did, as its events tell it."""

from __future__ import annotations

from datetime import datetime

from tests.support.observer import AriObserver, Event, channel_id


def ts(event: Event) -> float:
    """The event's own timestamp (Asterisk's clock), as epoch seconds."""
    return datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def is_type(e: Event, type_: str, chan: str | None = None) -> bool:
    """An event of ``type_`` (about channel ``chan``, if given)."""
    return e.get("type") == type_ and (chan is None or channel_id(e) == chan)


def is_playback(e: Event, kind: str, chan: str | None = None, file: str | None = None) -> bool:
    """A playback event ``kind`` (PlaybackStarted/Finished) on channel ``chan`` of the
    prompt ``file`` (``en/offer``, ``connecting``); None matches any."""
    pb = e.get("playback") or {}
    if e.get("type") != kind:
        return False
    if chan is not None and pb.get("target_uri") != f"channel:{chan}":
        return False
    return file is None or str(pb.get("media_uri", "")).endswith("/" + file)


def playbacks(obs: AriObserver, chan: str, file: str) -> list[Event]:
    """Every start of ``file`` on ``chan`` so far."""
    return obs.find(lambda e: is_playback(e, "PlaybackStarted", chan, file))


def playback_chan(e: Event) -> str:
    """The channel a playback event plays to."""
    return str((e.get("playback") or {}).get("target_uri", "")).removeprefix("channel:")


async def caller_channel(obs: AriObserver, number: str, timeout: float = 30) -> tuple[str, Event]:
    """The caller's channel id, and the event of it entering Stasis (ChannelDialplan to
    the Stasis application: the observer app does not get other apps' StasisStart).

    Each channel is handed out once per observer (``obs.claimed``): a second caller from
    the same number gets its own channel."""
    ev = await obs.wait_for(
        lambda e: e.get("type") == "ChannelDialplan"
        and e.get("dialplan_app") == "Stasis"
        and e["channel"]["caller"]["number"] == number
        and e["channel"]["id"] not in obs.claimed,
        timeout,
    )
    obs.claimed.add(str(ev["channel"]["id"]))
    return str(ev["channel"]["id"]), ev


def stasis_channels(obs: AriObserver, number: str) -> list[str]:
    """Every channel from ``number`` that entered Stasis so far, in order."""
    return [str(e["channel"]["id"]) for e in obs.find(
        lambda e: e.get("type") == "ChannelDialplan" and e.get("dialplan_app") == "Stasis"
        and e["channel"]["caller"]["number"] == number)]


def bridged(obs: AriObserver, chan: str) -> list[Event]:
    """Every time ``chan`` entered a bridge."""
    return obs.find(lambda e: e.get("type") == "ChannelEnteredBridge"
                    and e["channel"]["id"] == chan)


def destroyed(obs: AriObserver, chan: str) -> bool:
    """Whether ``chan`` is gone from Asterisk."""
    return bool(obs.find(lambda e: is_type(e, "ChannelDestroyed", chan)))
