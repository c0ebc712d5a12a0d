"""Load benchmark: N concurrent callers in one queue, the service beside a bare ARI handler.

    bench/load                       # N = 50, 200, 500, 750, the service and the bare handler
    bench/load --quick               # N = 50, 200
    bench/load --sizes 50,750 --rate 25 --hold 14 --press-share 0.3
    bench/load --apps ivr --profile  # py-spy on the service during the callers' phase

A benchmark prints figures; it is not a pass/fail test. Needs root and the sandboxed
Asterisk of ``python -m rig.sandbox provision`` (``bash scripts/install-deps``), sipp.
Everything is on loopback. For each N and each app ("ivr": this service, "bare": the
handler in ``bench/bare.py``), in this order:

1. a fresh Asterisk on free ports (``rig.sandbox``, a wide RTP range) and an independent
   ARI observer subscribed to every event (Asterisk's own timestamps);
2. the app; for ivr, agent phones ``agent1..K`` (sipp) that start *not ready* and a sipp
   carrier that answers callbacks;
3. the callers' phase: N sipp callers at ``--rate`` per second (media echoed both ways,
   ``-rtp_echo``). The offer comes ``offer_after`` = ramp time + 3 s after the answer, so
   all N wait at once; ``--press-share`` of them press 1 ``--press-at`` s into the offer
   (RFC 4733) and hear the confirmation, the others hang up ``--hold`` s after the offer.
   CPU (from /proc) of the app and of Asterisk is taken over this window;
4. ivr only, the agents' phase: the agents go available and work the callbacks left in
   the queue for ``--agent-phase`` s (ring, preview, press 1, the carrier answers, talk,
   hang up): accept -> originate and agent free -> next offer are measured there.

Writes ``bench/results/load.md`` (tables), ``load.png`` (chart) and ``load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from rig import sandbox
from rig.sandbox import AsteriskInstance, die_with_parent_preexec, free_port, stop_process_group

REPO = Path(__file__).resolve().parent.parent
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
RESULTS = Path(__file__).resolve().parent / "results"
DTMF_1 = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")
DID = "7100"
QUEUE = f"q{DID}"
NUMBER_BASE = 2015551000  # 201-555-1000 on: valid US numbers, one per caller
DEFAULT_SIZES = (50, 200, 500, 750)
QUICK_SIZES = (50, 200)
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAILURE_CODES = (403, 404, 407, 408, 480, 481, 486, 487, 488, 500, 503, 603)


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# ------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    rate: float = 20.0  # new calls per second
    press_share: float = 0.3
    press_at: float = 4.0  # seconds into the offer
    hold: float = 14.0  # a caller who does not press hangs up this long after the offer
    agents: int = 6
    agent_phase: float = 20.0
    agent_press_at: float = 1.5  # the agent presses 1 this long after answering
    talk: float = 3.0  # then hangs up this long after the press

    def offer_after(self, n: int) -> float:
        return math.ceil(n / self.rate) + 3.0

    def callers_phase(self, n: int) -> float:
        """Upper bound of the callers' phase (the sipp process's timeout)."""
        return n / self.rate + self.offer_after(n) + self.hold + 60.0


# ------------------------------------------------------------------ /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (reaped children excluded)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (the event loop) and of the other threads (the
    service's store writer) of a process."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = "main thread" if task.name == str(pid) else "other threads"
            with (task / "stat").open() as f:
                rest = f.read().rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / CLK_TCK
    return out


def hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version()}


# ------------------------------------------------------------------ statistics


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-100), linear between closest ranks; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Dist:
    """Latency percentiles in milliseconds, and how many samples."""

    n: int = 0
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    note: str = ""

    @classmethod
    def of_ms(cls, values: Sequence[float], note: str = "") -> Dist:
        return cls(len(values), pct(values, 50), pct(values, 95), pct(values, 99), note)

    def text(self) -> str:
        if not self.n:
            return "-"
        return f"{self.p50:.0f} / {self.p95:.0f} / {self.p99:.0f}"


def histogram_dist(metrics: str, name: str) -> Dist:
    """Percentiles of a Prometheus histogram (all label sets summed), interpolated
    linearly inside buckets like ``histogram_quantile``."""
    buckets: dict[float, float] = {}
    pattern = re.compile(rf'^{name}_bucket\{{(.*)\}} (\S+)$')
    for line in metrics.splitlines():
        m = pattern.match(line)
        if m is None:
            continue
        le = re.search(r'le="([^"]+)"', m.group(1))
        if le is None:
            continue
        bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(m.group(2))
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return Dist()

    def quantile(q: float) -> float:
        rank = q * total
        prev_bound, prev_count = 0.0, 0.0
        for b in bounds:
            c = buckets[b]
            if c >= rank:
                if math.isinf(b):
                    return prev_bound * 1000
                width = c - prev_count
                frac = (rank - prev_count) / width if width else 1.0
                return (prev_bound + (b - prev_bound) * frac) * 1000
            prev_bound, prev_count = b, c
        return float("nan")

    return Dist(int(total), quantile(0.5), quantile(0.95), quantile(0.99),
                "histogram, bucket-interpolated")


# ------------------------------------------------------------------ sipp


class Sipp:
    """One sipp process in its own directory and process group."""

    def __init__(self, label: str, workdir: Path) -> None:
        self.dir = workdir / f"sipp-{label}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = self.dir / "calls.log"

    def render(self, template: str, **values: str) -> Path:
        text = (SIPP_DIR / template).read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        left = re.findall(r"\{\{\w+\}\}", text)
        if left:
            raise RuntimeError(f"{template}: unfilled placeholders {left}")
        path = self.dir / template
        path.write_text(text)
        return path

    def start(self, args: Sequence[str]) -> None:
        cmd = ["sipp", *args, "-nostdin", "-trace_err", "-error_file", str(self.dir / "err.log"),
               "-trace_logs", "-log_file", str(self.log_file),
               "-trace_stat", "-stf", str(self.dir / "stat.csv")]
        with (self.dir / "sipp.out").open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent_preexec())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, 5.0)

    def tags(self) -> dict[str, int]:
        """How the calls ended, from the scenario's <log> lines."""
        counts: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_file.read_text(errors="replace").splitlines():
                word = line.split(" ", 1)[0]
                if word.isupper():
                    counts[word] = counts.get(word, 0) + 1
        return counts

    def response_times_ms(self) -> list[float]:
        """The scenario's measured response times (``start_rtd``/``rtd``, ``-trace_rtt``):
        for the callers, INVITE to 200 OK, one per answered call."""
        out: list[float] = []
        for path in self.dir.glob("*_rtt.csv"):
            for line in path.read_text(errors="replace").splitlines()[1:]:
                fields = line.split(";")
                with contextlib.suppress(ValueError, IndexError):
                    out.append(float(fields[1]))
        return out

    def failed_calls(self) -> int:
        """sipp's own count of failed calls (unexpected messages, timeouts)."""
        try:
            lines = (self.dir / "stat.csv").read_text().splitlines()
        except FileNotFoundError:
            return 0
        if len(lines) < 2:
            return 0
        head, last = lines[0].split(";"), lines[-1].split(";")
        with contextlib.suppress(ValueError, IndexError):
            return int(last[head.index("FailedCall(C)")])
        return 0


def start_callers(inst: AsteriskInstance, n: int, plan: Plan, workdir: Path) -> Sipp:
    sipp = Sipp("callers", workdir)
    pressers = round(n * plan.press_share)
    # Pressers spread evenly over the ramp (every k-th caller), the same ones every run.
    chosen = {round(i * n / pressers) for i in range(pressers)} if pressers else set()
    inf = sipp.dir / "callers.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(
        f"{NUMBER_BASE + k};{1 if k in chosen else 0};\n" for k in range(n)))
    offer = plan.offer_after(n)
    failures = "\n".join(
        f'  <recv response="{c}" optional="true" next="rejected"/>' for c in FAILURE_CODES)
    scenario = sipp.render(
        "caller.xml", failures=failures, dtmf_pcap=str(DTMF_1),
        press_ms=str(int((offer + plan.press_at) * 1000)),
        hold_ms=str(int((offer + plan.hold) * 1000)),
        bye_wait_ms="30000")
    host = inst.carrier_host
    sipp.start([
        f"127.0.0.1:{inst.sip_port}", "-sf", str(scenario), "-inf", str(inf), "-s", DID,
        "-i", host, "-p", str(free_port(host)), "-mi", host, "-mp", str(media_port(host)),
        "-rtp_echo", "-m", str(n), "-l", str(n + 10), "-r", f"{plan.rate:g}", "-rp", "1000",
        "-trace_rtt", "-rtt_freq", "1",
        "-timeout", f"{int(plan.callers_phase(n))}s", "-timeout_error",
        "-max_socket", "20000",
    ])
    return sipp


def start_uas(label: str, host: str, port: int, workdir: Path, *, press_ms: int | None,
              talk_ms: int, ring_ms: int = 300) -> Sipp:
    sipp = Sipp(label, workdir)
    press = "" if press_ms is None else (
        f'  <recv request="BYE" timeout="{press_ms}" ontimeout="press" next="gotbye"/>\n'
        '  <label id="press"/>\n'
        f'  <nop><action><exec play_pcap_audio="{DTMF_1}"/></action></nop>')
    scenario = sipp.render("uas.xml", ring_ms=str(ring_ms), press_block=press,
                           talk_ms=str(talk_ms), press="1" if press_ms else "0",
                           press_ms=str(press_ms or 0))
    sipp.start(["-sf", str(scenario), "-i", host, "-p", str(port), "-mi", host,
                "-mp", str(media_port(host)), "-rtp_echo", "-aa"])
    return sipp


def media_port(host: str) -> int:
    """Media ports for a sipp peer, above every Asterisk RTP range the runs use."""
    return sandbox.media_port(host, low=40000)


# ------------------------------------------------------------------ observer


@dataclass
class Seen:
    """One ARI event, reduced to what the figures need (Asterisk's timestamp)."""

    type: str
    ts: float
    chan: str = ""
    name: str = ""
    number: str = ""
    digit: str = ""
    media: str = ""
    target: str = ""


def ari_auth(inst: AsteriskInstance) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(inst.ari_user, inst.ari_password)}


def asterisk_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class Observer:
    """A second ARI app with ``subscribeAll=true``: every channel, DTMF and playback
    event, including those of the channels the app under test controls."""

    KEEP = frozenset({"ChannelCreated", "ChannelDestroyed", "ChannelDtmfReceived",
                      "PlaybackStarted", "StasisStart"})

    def __init__(self, inst: AsteriskInstance) -> None:
        self.inst = inst
        self.events: list[Seen] = []
        self.active: set[str] = set()  # caller channels up now
        self.peak = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.version = "?"

    async def start(self) -> None:
        i = self.inst
        self._session = aiohttp.ClientSession(headers=ari_auth(i))
        async with self._session.get(f"{i.ari_url}/ari/asterisk/info") as resp:
            info = await resp.json()
            self.version = str(info.get("system", {}).get("version", "?"))
        ws = await self._session.ws_connect(
            f"{i.ari_url}/ari/events?app=benchobserver&subscribeAll=true", heartbeat=20)
        self._task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            ev: dict[str, Any] = json.loads(msg.data)
            kind = str(ev.get("type"))
            if kind not in self.KEEP:
                continue
            seen = Seen(kind, asterisk_time(ev["timestamp"]))
            ch = ev.get("channel")
            if isinstance(ch, dict):
                seen.chan, seen.name = str(ch.get("id")), str(ch.get("name"))
                seen.number = str(ch.get("caller", {}).get("number", ""))
            pb = ev.get("playback")
            if isinstance(pb, dict):
                seen.media, seen.target = str(pb.get("media_uri")), str(pb.get("target_uri"))
            seen.digit = str(ev.get("digit", ""))
            self.events.append(seen)
            if seen.number.startswith("201555") and seen.name.startswith("PJSIP/carrier-"):
                if kind == "ChannelCreated":
                    self.active.add(seen.chan)
                    self.peak = max(self.peak, len(self.active))
                elif kind == "ChannelDestroyed":
                    self.active.discard(seen.chan)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def dtmf_to_confirmation_ms(self) -> tuple[list[float], int, int]:
        """Per caller: first DTMF 1 -> PlaybackStarted of the confirmation on the same
        channel (Asterisk's timestamps). Also the presses seen and the confirmations."""
        pressed: dict[str, float] = {}
        out: list[float] = []
        confirmations = 0
        for e in self.events:
            if e.type == "ChannelDtmfReceived" and e.digit == "1" \
                    and e.number.startswith("201555"):
                pressed.setdefault(e.chan, e.ts)
            elif e.type == "PlaybackStarted" and "confirmation" in e.media:
                chan = e.target.removeprefix("channel:")
                confirmations += 1
                if chan in pressed:
                    out.append((e.ts - pressed[chan]) * 1000)
        return out, len(pressed), confirmations


# ------------------------------------------------------------------ the apps under test


@dataclass
class RunResult:
    app: str
    n: int
    offer_after: float
    completed: int = 0
    lost: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    sipp_failed: int = 0
    peak_callers: int = 0
    presses: int = 0
    confirmations: int = 0
    window_s: float = 0.0
    app_cpu_s: float = 0.0
    asterisk_cpu_s: float = 0.0
    app_hwm_mb: float = 0.0
    dtmf_to_playback: Dist = field(default_factory=Dist)  # Asterisk's clock
    #: INVITE -> 200 OK as the callers (sipp) measured it, and the slowest
    answer: Dist = field(default_factory=Dist)
    answer_max_ms: float = float("nan")
    press_to_play: Dist = field(default_factory=Dist)  # the app's clock
    accepted: int = 0
    accept_to_dial: Dist = field(default_factory=Dist)
    free_to_offer: Dist = field(default_factory=Dist)
    agent_phase_cpu_s: float = 0.0
    profile: str = ""
    error: str = ""
    #: the app's CPU seconds per thread over the callers' window (the service: its event
    #: loop and its store writer)
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def app_ms_per_call(self) -> float:
        return self.app_cpu_s * 1000 / self.n

    @property
    def app_share(self) -> float:
        return self.app_cpu_s / self.asterisk_cpu_s if self.asterisk_cpu_s else float("nan")


class App:
    """The app under test: a subprocess connected to the instance's Stasis app."""

    name = ""

    def __init__(self, inst: AsteriskInstance, workdir: Path) -> None:
        self.inst = inst
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self, cmd: Sequence[str]) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent_preexec())

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited\n{tail}")

    async def app_registered(self, http: aiohttp.ClientSession) -> bool:
        async with http.get(f"{self.inst.ari_url}/ari/applications") as resp:
            apps = await resp.json()
        return any(a.get("name") == self.inst.app_name for a in apps)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        i = self.inst
        async with aiohttp.ClientSession(headers=ari_auth(i)) as http:
            deadline = time.monotonic() + timeout
            while not await self.app_registered(http):
                self.alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not connect to ARI")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, 20.0)


class Bare(App):
    name = "bare"

    def start(self, offer_after: float) -> None:
        i = self.inst
        self.out = self.workdir / "bare-latencies.json"
        os.environ["IVR_BENCH_ARI_PASSWORD"] = i.ari_password  # not on the command line
        self.spawn([sys.executable, "-m", "bench.bare", "--url", i.ari_url, "--user", i.ari_user,
                    "--app", i.app_name,
                    "--offer-after", str(offer_after), "--prompts", f"{i.prompts_dir}/en",
                    "--out", str(self.out)])

    def press_to_play(self) -> Dist:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(self.out.read_text())
            return Dist.of_ms([s * 1000 for s in data["press_to_play_s"]], "exact")
        return Dist()


class Ivr(App):
    name = "ivr"

    def start(self, offer_after: float, agents: Sequence[str]) -> None:
        i = self.inst
        self.token = secrets.token_hex(24)
        self.http_port = free_port(udp=False)
        self.agents = list(agents)
        doc: dict[str, Any] = {
            "region": "US",
            "ari": {"url": i.ari_url, "user": i.ari_user, "password": i.ari_password,
                    "app": i.app_name},
            "http": {"bind": "127.0.0.1", "port": self.http_port, "api_token": self.token},
            "store": {"path": str(self.workdir / "ivr.sqlite3")},
            "prompts": {"dir": str(REPO / "prompts"), "asterisk_dir": i.prompts_dir},
            "outbound": {"dial": "PJSIP/{national}@carrier", "dial_timeout": "15s"},
            "queues": {QUEUE: {
                "did": DID, "caller_id": "5550100", "max_waiting": 1, "max_ewt": "5m",
                "first_offer_after": f"{offer_after:g}s", "repeat_offer_every": "3600s",
                "ring_timeout": "10s", "preview_timeout": "15s", "retry_interval": "60s",
                "wrap_up": "0s"}},
            "agents": {a: {"endpoint": f"PJSIP/{a}", "queues": [QUEUE]} for a in agents},
            "log_level": "INFO",
        }
        cfg = self.workdir / "config.yaml"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        ivr = Path(sys.executable).parent / "ivr"
        self.spawn([str(ivr) if ivr.exists() else "ivr", "run", str(cfg)])

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def set_agents(self, state: str, timeout: float = 30.0) -> None:
        """Every agent to ``state`` (available / not_ready), once its phone is reachable."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(headers=self._headers()) as http:
            todo = list(self.agents)
            while todo:
                self.alive()
                agent = todo[0]
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.post(f"{self.api}/api/agents/{agent}/state",
                                         json={"state": state}) as resp:
                        if resp.status == 200 and (await resp.json())["status"] == state:
                            todo.pop(0)
                            continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"agent {agent} never went {state}")
                await asyncio.sleep(0.2)

    async def stop_offers(self) -> None:
        """Every agent not ready, best effort: one on a call stays on it."""
        async with aiohttp.ClientSession(headers=self._headers()) as http:
            for agent in self.agents:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.post(f"{self.api}/api/agents/{agent}/state",
                                         json={"state": "not_ready"}) as resp:
                        await resp.read()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession(headers=self._headers()) as http, \
                http.get(f"{self.api}/metrics") as resp:
            return await resp.text()

    def free_to_offer(self, since: str) -> Dist:
        """Agent free (a call ended: ... -> available) to the next offer ringing that
        agent (available -> ringing), from the service's log (millisecond timestamps).
        Only log lines at or after ``since`` (the agents' phase)."""
        line_re = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO ivr\.flows\.agents "
                             r".*agent (\S+): (\S+) -> (\S+)$")
        free: dict[str, float] = {}
        out: list[float] = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = line_re.match(line)
            if m is None or m.group(1) < since:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            agent, old, new = m.group(2), m.group(3), m.group(4)
            if new == "available" and old in ("busy", "wrap_up", "previewing", "ringing"):
                free[agent] = t
            elif old == "available" and new == "ringing" and agent in free:
                out.append((t - free.pop(agent)) * 1000)
        return Dist.of_ms(out, "service log, ms timestamps")


# ------------------------------------------------------------------ one run


def py_spy() -> str:
    """py-spy from the virtualenv (``pip install py-spy``), else from PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy") or ""


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` at 50 Hz (collapsed stacks), until SIGINT. ``--gil``: only
    samples of the thread holding the GIL, i.e. running Python code, so the shares are
    CPU; without it a thread waiting for the GIL (behind the store writer, say) counts
    as busy wherever it waits."""
    return subprocess.Popen(
        [py_spy(), "record", "--rate", "50", "--format", "raw", "--threads", "--gil",
         "--nonblocking", "-o", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def run_one(app_name: str, n: int, plan: Plan, rootfs: Path, workdir: Path,
                  profile: bool, info: dict[str, str]) -> RunResult:
    tag = f"[{app_name} N={n}]"
    offer_after = plan.offer_after(n)
    res = RunResult(app_name, n, offer_after)
    agents = [f"agent{k}" for k in range(1, plan.agents + 1)]
    say(f"{tag} starting Asterisk (RTP range for {n} calls)")
    inst = sandbox.start(rootfs, config_src=REPO / "asterisk-config", prompts_src=REPO / "prompts",
                         agents=agents, rtp_ports=max(sandbox.RTP_PORTS_PER_RUN, 2 * n + 400))
    peers: list[Sipp] = []
    app: App | None = None
    observer = Observer(inst)
    spy: subprocess.Popen[bytes] | None = None
    try:
        await observer.start()
        info["asterisk"] = observer.version
        if app_name == "ivr":
            ivr = Ivr(inst, workdir)
            app = ivr
            for a in agents:
                peers.append(start_uas(a, "127.0.0.1", inst.agent_ports[a], workdir,
                                       press_ms=int(plan.agent_press_at * 1000),
                                       talk_ms=int(plan.talk * 1000)))
            peers.append(start_uas("carrier", inst.carrier_host, inst.carrier_port, workdir,
                                   press_ms=None, talk_ms=120_000))
            ivr.start(offer_after, agents)
            await ivr.wait_ready()
            await ivr.set_agents("not_ready")
        else:
            bare = Bare(inst, workdir)
            app = bare
            bare.start(offer_after)
            await bare.wait_ready()
        say(f"{tag} {app_name} up (pid {app.pid}); {n} callers at {plan.rate:g}/s, "
            f"offer after {offer_after:g}s, {plan.press_share:.0%} press 1")
        await asyncio.sleep(1.0)
        app_cpu0, ast_cpu0, t0 = cpu_seconds(app.pid), cpu_seconds(inst.pid or 0), time.time()
        threads0 = thread_cpu(app.pid)
        callers = start_callers(inst, n, plan, workdir)
        peers.append(callers)
        if profile:
            spy = start_profiler(app.pid, workdir / "profile.txt")
        last = 0.0
        deadline = time.monotonic() + plan.callers_phase(n) + 30
        while callers.running():
            app.alive()
            if time.monotonic() > deadline:
                raise TimeoutError("callers' sipp did not finish")
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                _, presses, confs = observer.dtmf_to_confirmation_ms()
                say(f"{tag} {time.time() - t0:5.0f}s: {len(observer.active)} callers up "
                    f"(peak {observer.peak}), {presses} presses, {confs} confirmations")
            await asyncio.sleep(0.5)
        res.window_s = time.time() - t0
        res.app_cpu_s = cpu_seconds(app.pid) - app_cpu0
        res.asterisk_cpu_s = cpu_seconds(inst.pid or 0) - ast_cpu0
        res.app_hwm_mb = hwm_mb(app.pid)
        res.threads = {k: round(v - threads0.get(k, 0.0), 2)
                       for k, v in thread_cpu(app.pid).items()}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
            res.profile = str(workdir / "profile.txt")
        tags = callers.tags()
        res.outcomes = tags
        res.sipp_failed = callers.failed_calls()
        res.completed = tags.get("HELD", 0) + tags.get("CONFIRMED", 0)
        res.lost = n - res.completed
        res.peak_callers = observer.peak
        answers = callers.response_times_ms()
        res.answer = Dist.of_ms(answers, "sipp, INVITE to 200 OK")
        res.answer_max_ms = max(answers, default=float("nan"))
        lat, res.presses, res.confirmations = observer.dtmf_to_confirmation_ms()
        res.dtmf_to_playback = Dist.of_ms(lat, "Asterisk event timestamps")
        say(f"{tag} callers done in {res.window_s:.0f}s: {res.completed} completed, "
            f"{res.lost} lost {tags}; app CPU {res.app_cpu_s:.2f}s {res.threads}, Asterisk "
            f"{res.asterisk_cpu_s:.2f}s; DTMF->PlaybackStarted p50/p95/p99 "
            f"{res.dtmf_to_playback.text()} ms; answered (INVITE->200 OK) p50/p95/p99 "
            f"{res.answer.text()}, max {res.answer_max_ms:.0f} ms")
        if isinstance(app, Ivr):
            res.press_to_play = histogram_dist(await app.metrics(),
                                               "ivr_dtmf_to_confirmation_seconds")
            since = time.strftime("%Y-%m-%d %H:%M:%S,000")
            cpu_a = cpu_seconds(app.pid)
            say(f"{tag} agents' phase: {plan.agents} agents available for "
                f"{plan.agent_phase:g}s, {res.confirmations} callbacks in the queue")
            await app.set_agents("available")
            await asyncio.sleep(plan.agent_phase)
            await app.stop_offers()
            res.agent_phase_cpu_s = cpu_seconds(app.pid) - cpu_a
            metrics = await app.metrics()
            res.accept_to_dial = histogram_dist(metrics, "ivr_accept_to_dial_seconds")
            res.accepted = res.accept_to_dial.n
            res.free_to_offer = app.free_to_offer(since)
            res.app_hwm_mb = max(res.app_hwm_mb, hwm_mb(app.pid))
            say(f"{tag} agents: {res.accepted} callbacks dialled; accept->originate "
                f"{res.accept_to_dial.text()} ms, free->next offer "
                f"{res.free_to_offer.text()} ms")
        elif isinstance(app, Bare):
            app.stop()
            res.press_to_play = app.press_to_play()
    finally:
        if spy is not None and spy.poll() is None:
            stop_process_group(spy, 5.0)
        if app is not None:
            app.stop()
        for p in peers:
            p.stop()
        await observer.close()
        # Asterisk's own warnings (taskprocessor overload, ...) stay with the run's logs.
        with contextlib.suppress(OSError):
            shutil.copy(inst.messages_log, workdir / "asterisk-messages.log")
        inst.remove()
        sandbox.release_rtp_range(inst.rtp_start, inst.rtp_end)
    return res


# ------------------------------------------------------------------ report


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(results: list[RunResult], plan: Plan, info: dict[str, str], elapsed: float) -> str:
    by = {(r.app, r.n): r for r in results if not r.error}
    failed = {(r.app, r.n): r for r in results if r.error}
    sizes = sorted({r.n for r in results})
    lines = [
        "# Load benchmark: the service beside a bare ARI handler",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} by `bench/load` in {elapsed / 60:.1f} min. "
        f"Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
        f"Asterisk {info.get('asterisk', '?')}, Python {info['python']}.",
        "",
        f"Load: N callers at {plan.rate:g} calls/s into one queue, media echoed by sipp "
        f"(`-rtp_echo`); the offer comes ramp time + 3 s after the answer, so all N wait "
        f"at once; {plan.press_share:.0%} press 1 {plan.press_at:g} s into the offer, the "
        f"others hang up {plan.hold:g} s after it. CPU from /proc over the callers' window "
        "(first INVITE to the last call's end). DTMF→PlaybackStarted: Asterisk's own "
        "event timestamps seen by an independent ARI observer (first DTMF 1 → the "
        "confirmation's PlaybackStarted). Press→play request: the app's own clock "
        "(ivr: its `ivr_dtmf_to_confirmation_seconds` histogram, bucket-interpolated, the "
        "disk commit inside; bare: exact).",
        "",
        "| N | app | completed / lost | presses → confirmations | app CPU s | Asterisk CPU s "
        "| app / Asterisk | app CPU ms/call | app peak RSS MB | DTMF→PlaybackStarted "
        "p50 / p95 / p99 ms | press→play request p50 / p95 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for app in ("bare", "ivr"):
            r = by.get((app, n)) or failed.get((app, n))
            if r is None:
                continue
            if r.error:
                lines.append(f"| {n} | {app} | failed: {r.error[:80]} |||||||||")
                continue
            lines.append(
                f"| {n} | {app} | {r.completed} / {r.lost} | {r.presses} → {r.confirmations} "
                f"| {r.app_cpu_s:.2f} | {r.asterisk_cpu_s:.1f} | {r.app_share:.1%} "
                f"| {r.app_ms_per_call:.1f} | {r.app_hwm_mb:.0f} | {r.dtmf_to_playback.text()} "
                f"| {r.press_to_play.text()} |")
    lines += [
        "",
        "## Against the targets (ivr ÷ bare at the same N)",
        "",
        "| N | 0 lost | CPU/call ivr ÷ bare (<= 1.5x) | ivr CPU / Asterisk (<= 10 %) "
        "| DTMF→PlaybackStarted p99 ivr ÷ bare (<= 1.2x) | p50 ivr ÷ bare | ivr RSS (<= 100 MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        o, b = by.get(("ivr", n)), by.get(("bare", n))
        if o is None:
            continue
        cpu = ratio(o.app_ms_per_call, b.app_ms_per_call) if b else "-"
        p99 = ratio(o.dtmf_to_playback.p99, b.dtmf_to_playback.p99) if b else "-"
        p50 = ratio(o.dtmf_to_playback.p50, b.dtmf_to_playback.p50) if b else "-"
        cpu_ok = b is not None and o.app_ms_per_call <= 1.5 * b.app_ms_per_call
        p99_ok = b is not None and o.dtmf_to_playback.p99 <= 1.2 * b.dtmf_to_playback.p99
        lines.append(
            f"| {n} | {verdict(o.lost == 0)} ({o.lost}) | {cpu} {verdict(cpu_ok)} "
            f"| {o.app_share:.1%} {verdict(o.app_share <= 0.10)} | {p99} {verdict(p99_ok)} "
            f"| {p50} | {o.app_hwm_mb:.0f} MB {verdict(o.app_hwm_mb <= 100)} |")
    lines += [
        "",
        "## Answer time as the callers see it (INVITE → 200 OK, sipp)",
        "",
        "A caller whose call is not answered within 30 s gives up (NOANSWER, counted lost).",
        "",
        "| N | app | answered | p50 / p95 / p99 ms | slowest ms | not answered in 30 s |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for app in ("bare", "ivr"):
            r = by.get((app, n))
            if r is None:
                continue
            lines.append(f"| {n} | {app} | {r.answer.n} | {r.answer.text()} "
                         f"| {r.answer_max_ms:.0f} | {r.outcomes.get('NOANSWER', 0)} |")
    split = [f"N={n}: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(
        by[("ivr", n)].threads.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        for n in sizes if ("ivr", n) in by and by[("ivr", n)].threads]
    if split:
        lines += ["", "ivr CPU by thread over the callers' window: " + "; ".join(split) + "."]
    lines += [
        "",
        f"## Agents (ivr only: {plan.agents} sipp agents work the callbacks left in the "
        f"queue for {plan.agent_phase:g} s after the callers' phase)",
        "",
        "| N | callbacks in queue | dialled | accept→originate sent p50 / p95 / p99 ms "
        "| agent free→next offer p50 / p95 / p99 ms (n) | app CPU s in this phase |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        o = by.get(("ivr", n))
        if o is None:
            continue
        lines.append(f"| {n} | {o.confirmations} | {o.accepted} | {o.accept_to_dial.text()} "
                     f"| {o.free_to_offer.text()} ({o.free_to_offer.n}) "
                     f"| {o.agent_phase_cpu_s:.2f} |")
    lines += ["", "accept→originate: the service's `ivr_accept_to_dial_seconds` histogram "
              "(bucket-interpolated); agent free→next offer: the service's log (ms "
              "timestamps). Lost = calls that did not end as planned (dropped by Asterisk, "
              "no answer, rejected, a press with no BYE after the confirmation, sipp "
              "failures).", ""]
    return "\n".join(lines)


def chart(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for app, style in (("bare", "o--"), ("ivr", "s-")):
        rs = sorted((r for r in results if r.app == app and not r.error), key=lambda r: r.n)
        if not rs:
            continue
        ns = [r.n for r in rs]
        axes[0].plot(ns, [r.dtmf_to_playback.p99 for r in rs], style, label=f"{app} p99")
        axes[0].plot(ns, [r.dtmf_to_playback.p50 for r in rs], style, alpha=0.5,
                     label=f"{app} p50")
        axes[1].plot(ns, [r.app_ms_per_call for r in rs], style, label=app)
        axes[2].plot(ns, [100 * r.app_share for r in rs], style, label=app)
    axes[0].set(title="DTMF 1 → confirmation PlaybackStarted (Asterisk clock)",
                xlabel="concurrent callers N", ylabel="ms", yscale="log")
    axes[1].set(title="app CPU per call", xlabel="concurrent callers N", ylabel="ms")
    axes[2].set(title="app CPU / Asterisk CPU", xlabel="concurrent callers N", ylabel="%")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def profile_summary(path: Path, top: int = 25) -> str:
    """Inclusive share of samples per function from py-spy's raw (collapsed) output."""
    total = 0
    incl: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        total += count
        for frame in set(stack.split(";")):
            incl[frame] = incl.get(frame, 0) + count
    rows = sorted(incl.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{100 * c / total:5.1f}%  {f}" for f, c in rows) if total else ""


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help="comma-separated N (default 50,200,500,750)")
    p.add_argument("--quick", action="store_true", help="N = 50, 200")
    p.add_argument("--apps", default="bare,ivr", help="bare,ivr (default both, in that order)")
    p.add_argument("--rate", type=float, default=Plan.rate, help="new calls per second")
    p.add_argument("--hold", type=float, default=Plan.hold,
                   help="a caller who does not press hangs up this long after the offer")
    p.add_argument("--press-share", type=float, default=Plan.press_share)
    p.add_argument("--press-at", type=float, default=Plan.press_at,
                   help="seconds into the offer the pressers press 1")
    p.add_argument("--agents", type=int, default=Plan.agents)
    p.add_argument("--agent-phase", type=float, default=Plan.agent_phase)
    p.add_argument("--profile", action="store_true", help="py-spy the ivr service")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (kept anyway when a call was lost)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    p.add_argument("--cache-dir", type=Path, default=sandbox.DEFAULT_CACHE)
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    if not set(apps) <= {"ivr", "bare"} or not apps:
        raise SystemExit("--apps: bare, ivr")
    if os.geteuid() != 0:
        raise SystemExit("bench/load needs root (Asterisk runs in a chroot)")
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (apt-get install sip-tester)")
    if args.profile and not py_spy():
        raise SystemExit("--profile needs py-spy (.venv/bin/pip install py-spy)")
    plan = Plan(rate=args.rate, press_share=args.press_share, press_at=args.press_at,
                hold=args.hold, agents=args.agents, agent_phase=args.agent_phase)
    started = time.monotonic()
    rootfs = sandbox.provision(args.cache_dir)
    info = machine()
    results: list[RunResult] = []
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ivr-bench-")
    for n in sizes:
        for app in apps:
            try:
                r = await run_one(app, n, plan, rootfs, Path(tmp) / f"{app}-{n}",
                                  args.profile and app == "ivr", info)
            except Exception as exc:  # a failed run is reported, the others go on
                say(f"[{app} N={n}] FAILED: {exc!r}")
                r = RunResult(app, n, plan.offer_after(n), lost=n, error=repr(exc))
            if r.profile:
                summary = profile_summary(Path(r.profile))
                dest = args.out / f"profile-{app}-{n}.txt"
                dest.write_text(summary + "\n")
                r.profile = str(dest)
                say(f"[{app} N={n}] profile (inclusive, top 12):\n"
                    + "\n".join(summary.splitlines()[:12]))
            results.append(r)
    if args.keep or any(r.lost or r.error for r in results):
        say(f"logs, sipp traces and configs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    md = report(results, plan, info, elapsed)
    (args.out / "load.md").write_text(md)
    (args.out / "load.json").write_text(json.dumps(
        {"machine": info, "plan": asdict(plan), "results": [asdict(r) for r in results]},
        indent=1, default=str))
    try:
        chart(results, args.out / "load.png")
        say(f"chart: {args.out / 'load.png'}")
    except ImportError:
        say("matplotlib not installed: no chart (pip install -e '.[bench]')")
    print(md, flush=True)
    say(f"report: {args.out / 'load.md'} ({elapsed / 60:.1f} min)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not DTMF_1.exists():
        raise SystemExit(f"missing {DTMF_1} (package sip-tester)")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
