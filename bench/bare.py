"""The bare ARI handler the load benchmark measures the service against.

The same caller-facing work as the service, nothing else: answer, music on hold, the
offer after a delay (music back after it), on 1 stop the offer, play the confirmation,
hang up. No queue, store, agents or metrics. On SIGTERM it writes the press-to-play
latencies (its own clock: DTMF 1 received to the confirmation's play request sent) to
``--out`` as JSON and exits.

    IVR_BENCH_ARI_PASSWORD=P python -m bench.bare --url http://127.0.0.1:8088 --user U --app ivr \
        --offer-after 12 --prompts /ivr-runs/x/prompts/en --out latencies.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    timers: dict[str, asyncio.TimerHandle] = {}
    offering: dict[str, str] = {}  # channel -> the offer's playback id
    offer_of: dict[str, str] = {}  # offer playback id -> channel
    confirming: dict[str, str] = {}  # confirmation playback id -> channel
    offer_uri = f"sound:{args.prompts}/offer"
    confirmation_uri = f"sound:{args.prompts}/confirmation"
    base = f"{args.url}/ari"

    password = os.environ["IVR_BENCH_ARI_PASSWORD"]
    auth = {"Authorization": aiohttp.encode_basic_auth(args.user, password)}
    async with aiohttp.ClientSession(headers=auth) as http:

        async def ari(method: str, path: str, **params: str) -> None:
            async with http.request(method, base + path, params=params) as resp:
                await resp.read()

        def spawn(coro: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def arrive(chan: str) -> None:
            await ari("POST", f"/channels/{chan}/answer")
            await ari("POST", f"/channels/{chan}/moh", mohClass="default")

        async def offer(chan: str) -> None:
            pid = uuid.uuid4().hex
            offering[chan], offer_of[pid] = pid, chan
            await ari("DELETE", f"/channels/{chan}/moh")
            await ari("POST", f"/channels/{chan}/play/{pid}", media=offer_uri)

        async def confirm(chan: str, pressed: float, offer_pid: str | None) -> None:
            if offer_pid is not None:
                await ari("DELETE", f"/playbacks/{offer_pid}")
            else:
                await ari("DELETE", f"/channels/{chan}/moh")
            pid = uuid.uuid4().hex
            confirming[pid] = chan
            latencies.append(time.monotonic() - pressed)
            await ari("POST", f"/channels/{chan}/play/{pid}", media=confirmation_uri)

        def offer_later(chan: str) -> None:
            spawn(offer(chan))

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                ev = json.loads(msg.data)
                kind = ev.get("type")
                if kind == "StasisStart":
                    chan = ev["channel"]["id"]
                    spawn(arrive(chan))
                    timers[chan] = loop.call_later(args.offer_after, offer_later, chan)
                elif kind == "ChannelDtmfReceived" and ev.get("digit") == "1":
                    chan = ev["channel"]["id"]
                    if chan in offering:
                        pid = offering.pop(chan)
                        playing = pid in offer_of
                        offer_of.pop(pid, "")
                        spawn(confirm(chan, time.monotonic(), pid if playing else None))
                elif kind == "PlaybackFinished":
                    pid = ev["playback"]["id"]
                    if pid in confirming:
                        spawn(ari("DELETE", f"/channels/{confirming.pop(pid)}"))
                    elif pid in offer_of:  # the offer played to its end: music again
                        chan = offer_of.pop(pid)
                        spawn(ari("POST", f"/channels/{chan}/moh", mohClass="default"))
                elif kind == "StasisEnd":
                    chan = ev["channel"]["id"]
                    timer = timers.pop(chan, None)
                    if timer is not None:
                        timer.cancel()
                    offer_of.pop(offering.pop(chan, ""), "")

        ws_url = args.url.replace("http", "ws", 1) + f"/ari/events?app={args.app}"
        async with http.ws_connect(ws_url, heartbeat=20) as ws:
            reader = asyncio.create_task(read(ws))
            await stop.wait()
            reader.cancel()
    save(args.out, latencies)


def save(out: str, latencies: list[float]) -> None:
    Path(out).write_text(json.dumps({"press_to_play_s": latencies}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--offer-after", type=float, required=True)
    parser.add_argument("--prompts", required=True, help="the prompts' folder as Asterisk sees it")
    parser.add_argument("--out", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
