"""SIP peers for tests against the sandboxed Asterisk, driven by sipp subprocesses.

* ``SipCaller``  — a customer calling a DID through the carrier trunk (sends from
  ``instance.carrier_host`` so Asterisk identifies it as the carrier).
* ``SipPhone``   — an agent softphone on its static-contact port (or, for
  ``"regagent"``, one that registers with digest auth and answers via ``-oocsf``).
* ``SipCarrier`` — the carrier answering outbound callbacks on
  ``carrier_host:carrier_port``.

Results are parsed from sipp's own message trace (``-trace_msg``): what sipp actually
sent and received, with wall-clock times. sipp cannot take injected values in
``<pause>`` or ``recv timeout`` (sipp 3.6), so every peer renders its scenario from the
templates in ``tests/sipp/`` into a temp dir. Every wait inside a call is a
``<recv request="BYE" timeout=...>`` so the far end may hang up at any moment.

Per-call behaviour of a UAS (phone/carrier): ONE sipp process serves every call; a
sipp global counter numbers incoming INVITEs and call k follows ``behaviours[k-1]``
(the last behaviour repeats). No restart between calls, so no window where the port
is closed. Concurrent calls work (each is its own sipp call).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from rig.sandbox import AsteriskInstance, die_with_parent_preexec, free_port

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
PCAP_DIR = Path("/usr/share/sip-tester")
_PCAP_NAMES = {"*": "star", "#": "pound"}
_FAILURE_CODES = (
    400, 401, 403, 404, 405, 407, 408, 410, 415, 420, 480, 481, 482, 483, 484, 485,
    486, 487, 488, 491, 500, 501, 502, 503, 504, 580, 600, 603, 604, 606,
)  # fmt: skip
_handed_out_media: set[int] = set()


class SipError(RuntimeError):
    pass


# ------------------------------------------------------------------ helpers


def _render(template: str, **values: str) -> str:
    """Fill ``{{name}}`` placeholders; every placeholder must be given and used."""
    text = (SIPP_DIR / template).read_text() if template.endswith(".xml") else template
    for key, value in values.items():
        marker = "{{" + key + "}}"
        if marker not in text:
            raise SipError(f"{template}: no placeholder {marker}")
        text = text.replace(marker, value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise SipError(f"{template}: unfilled placeholders {left}")
    return text


def _pcap(digit: str) -> Path:
    if len(digit) != 1 or digit not in "0123456789*#":
        raise ValueError(f"not a DTMF digit: {digit!r}")
    path = PCAP_DIR / f"dtmf_2833_{_PCAP_NAMES.get(digit, digit)}.pcap"
    if not path.exists():
        raise SipError(f"missing {path} (package sip-tester)")
    return path


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def media_port(host: str) -> int:
    """A port p with p..p+3 free on ``host`` (sipp uses p and p+2 for audio/video)."""
    for _ in range(500):
        p = random.randrange(33000, 60000, 4)
        ports = range(p, p + 4)
        if any(q in _handed_out_media for q in ports):
            continue
        ok = True
        for q in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind((host, q))
                except OSError:
                    ok = False
                    break
        if ok:
            _handed_out_media.update(ports)
            return p
    raise SipError("no free media port")


def _timeline(
    events: Sequence[tuple[float, str]],
    prefix: str,
    render_event: Callable[[int, str], str],
) -> tuple[str, float]:
    """Waits (interruptible by a BYE → label ``gotbye``) then actions, in time order.

    Returns the XML and the time of the last event.
    """
    parts: list[str] = []
    now = 0.0
    for i, (at, what) in enumerate(sorted(events, key=lambda e: e[0])):
        if at > now:
            label = f"{prefix}w{i}"
            parts.append(
                f'  <recv request="BYE" timeout="{_ms(at - now)}" ontimeout="{label}"'
                ' next="gotbye"/>\n'
                f'  <label id="{label}"/>'
            )
            now = at
        parts.append(render_event(i, what))
    return "\n".join(parts), now


def _play(digit: str) -> str:
    return f'  <nop><action><exec play_pcap_audio="{_pcap(digit)}"/></action></nop>'


# ------------------------------------------------------------------ message trace


@dataclass
class SipMessage:
    """One SIP message from sipp's ``-trace_msg`` log."""

    time: float  # wall clock (epoch seconds)
    direction: Literal["sent", "received"]
    first_line: str
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        """Request method, or the CSeq method of a response."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq.split() else ""

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        return int(self.first_line.split()[1])

    @property
    def call_id(self) -> str:
        return self.header("Call-ID") or ""

    @property
    def request_uri(self) -> str:
        return self.first_line.split()[1] if self.is_request else ""


_SEP = "-" * 47 + " "
_NAME_ADDR = re.compile(r'^\s*(?:"(?P<q>[^"]*)"|(?P<t>[^<"]*?))\s*<(?P<uri>[^>]*)>')


def parse_trace(path: Path) -> list[SipMessage]:
    """Parse a sipp ``-trace_msg`` file; an incomplete last block is skipped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out: list[SipMessage] = []
    blocks = text.split("\n" + _SEP)
    if not text.endswith("\n\n"):
        blocks = blocks[:-1]  # sipp ends each message with a blank line: still writing
    for block in blocks:
        block = block.removeprefix(_SEP)
        lines = block.split("\n")
        if len(lines) < 4:
            continue
        try:
            when = datetime.strptime(lines[0].strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        head = lines[1]
        direction: Literal["sent", "received"] = "sent" if " sent " in head else "received"
        msg = "\n".join(lines[3:]).replace("\r\n", "\n").lstrip("\n")
        if "\n\n" not in msg:
            continue  # still being written
        head_part, body = msg.split("\n\n", 1)
        hlines = head_part.split("\n")
        headers: list[tuple[str, str]] = []
        for line in hlines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded header
                k, v = headers[-1]
                headers[-1] = (k, v + " " + line.strip())
            elif ":" in line:
                k, v = line.split(":", 1)
                headers.append((k.strip(), v.strip()))
        out.append(SipMessage(when, direction, hlines[0].strip(), headers, body))
    return out


def parse_name_addr(value: str) -> tuple[str | None, str, str]:
    """``"Name" <sip:user@host>;tag=x`` → (display name or None, user, uri)."""
    m = _NAME_ADDR.match(value)
    if m:
        name = m.group("q") if m.group("q") is not None else (m.group("t") or "").strip()
        uri = m.group("uri")
    else:
        name, uri = "", value.split(";", 1)[0].strip()
    user = uri.split(":", 1)[-1].split("@", 1)[0].split(";", 1)[0] if "@" in uri else ""
    return (name or None), user, uri


# ------------------------------------------------------------------ sipp process


class _Sipp:
    """A sipp subprocess in its own temp dir and process group."""

    def __init__(self, label: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"sipp-{label}-"))
        self.message_log = self.dir / "messages.log"
        self.error_log = self.dir / "errors.log"
        self.output_log = self.dir / "sipp.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def start(self, args: Sequence[str]) -> None:
        if self.proc is not None:
            raise SipError("already started")
        if shutil.which("sipp") is None:
            raise SipError("sipp is not installed (apt-get install sip-tester)")
        self.args = [
            "sipp",
            *args,
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(self.message_log),
            "-trace_err",
            "-error_file",
            str(self.error_log),
        ]
        _STARTED.append(self)
        with self.output_log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent_preexec(),  # no sipp left behind if pytest dies
            )

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    async def wait(self, timeout: float) -> int:
        if self.proc is None:
            raise SipError("not started")
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sipp still running after {timeout:.0f}s\n{self.describe()}")
            await asyncio.sleep(0.05)
        return rc

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def messages(self) -> list[SipMessage]:
        return parse_trace(self.message_log)

    def describe(self, lines: int = 30) -> str:
        parts = [f"sipp: {' '.join(self.args)}", f"dir: {self.dir}"]
        for p in (self.output_log, self.error_log):
            with contextlib.suppress(FileNotFoundError):
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {p.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def cleanup(self) -> None:
        self.stop()
        if not os.environ.get("IVR_KEEP_RUNS"):
            shutil.rmtree(self.dir, ignore_errors=True)


_STARTED: list[_Sipp] = []


def stop_all() -> None:
    """Stop every sipp started so far (a test that failed midway leaves its peers)."""
    while _STARTED:
        _STARTED.pop().stop()


# ------------------------------------------------------------------ caller


@dataclass
class CallerResult:
    answered: bool
    answered_at: float | None  # wall time of the 200 OK to our INVITE
    hung_up_by: Literal["us", "them"] | None
    bye_received_at: float | None
    bye_sent_at: float | None
    rejected_with: int | None  # final non-2xx status, if any
    exit_code: int
    message_log: Path
    messages: list[SipMessage] = field(repr=False)


class SipCaller:
    """A customer calling ``did`` on the instance through the carrier trunk.

    ``caller=None`` calls as anonymous (``"Anonymous" <sip:anonymous@anonymous.invalid>``).
    ``digits``: ``(seconds after the ACK of the 200 OK, digit)`` played as RFC 4733
    RTP from sipp's pcaps. ``hangup_after``: we send BYE at that time after the
    answer; ``None``: wait for Asterisk's BYE up to ``max_duration`` (then we hang
    up). ``send_info_at``: a SIP INFO ``application/dtmf-relay`` (``info_digit``) at
    that time — Asterisk must answer it (anything else is an unexpected message that
    aborts sipp's call). Not answered within ``max_duration`` → CANCEL.
    """

    def __init__(
        self,
        instance: AsteriskInstance,
        did: str,
        *,
        caller: str | None = "5551234",
        caller_name: str | None = None,
        digits: Sequence[tuple[float, str]] = (),
        hangup_after: float | None = None,
        max_duration: float = 120.0,
        send_info_at: float | None = None,
        info_digit: str = "1",
        infos: Sequence[tuple[float, str]] = (),
    ) -> None:
        self.instance = instance
        self.did = did
        self.caller = caller
        self.max_duration = max_duration
        self._sipp = _Sipp(f"caller-{did}")
        host = instance.carrier_host
        self.local_port = free_port(host)
        self.media_port = media_port(host)
        if caller is None:
            from_hdr = '"Anonymous" <sip:anonymous@anonymous.invalid>'
            contact_user = "anonymous"
        else:
            name = f'"{caller_name}" ' if caller_name else ""
            from_hdr = f"{name}<sip:{caller}@{host}>"
            contact_user = caller
        for _, d in digits:
            _pcap(d)
        if hangup_after is not None and hangup_after > max_duration:
            raise ValueError("hangup_after > max_duration")

        events: list[tuple[float, str]] = [(t, "dtmf:" + d) for t, d in digits]
        if send_info_at is not None:
            events.append((send_info_at, "info:" + info_digit))
        # Digits as SIP INFO: unlike the RTP pcaps, any number of them, repeats included.
        events.extend((t, "info:" + d) for t, d in infos)
        cseq = [1]

        def render_event(i: int, what: str) -> str:
            kind, arg = what.split(":", 1)
            if kind == "dtmf":
                return _play(arg)
            cseq[0] += 1
            return _info_xml(from_hdr, contact_user, cseq[0], arg, f"i{i}")

        timeline, last = _timeline(events, "c", render_event)
        if hangup_after is not None:
            if hangup_after > last:
                timeline += (
                    f'\n  <recv request="BYE" timeout="{_ms(hangup_after - last)}"'
                    ' ontimeout="us_bye" next="gotbye"/>'
                )
        else:
            timeline += (
                f'\n  <recv request="BYE" timeout="{_ms(max(max_duration - last, 0.001))}"'
                ' ontimeout="us_bye" next="gotbye"/>'
            )
        failures = "\n".join(
            f'  <recv response="{c}" optional="true" next="rejected"'
            f' timeout="{_ms(max_duration)}" ontimeout="cancel"/>'
            for c in _FAILURE_CODES
        )
        self.scenario = self._sipp.write(
            "caller.xml",
            _render(
                "caller.xml",
                **{
                    "from": from_hdr,
                    "contact_user": contact_user,
                    "failures": failures,
                    "answer_timeout_ms": str(_ms(max_duration)),
                    "timeline": timeline,
                    "bye_cseq": str(cseq[0] + 1),
                },
            ),
        )

    @property
    def message_log(self) -> Path:
        return self._sipp.message_log

    def start(self) -> None:
        """Start the call (returns at once)."""
        inst = self.instance
        host = inst.carrier_host
        self._sipp.start(
            [
                f"127.0.0.1:{inst.sip_port}",
                "-sf", str(self.scenario),
                "-s", self.did,
                "-i", host,
                "-p", str(self.local_port),
                "-mi", host,
                "-mp", str(self.media_port),
                "-m", "1",
                "-l", "1",
                "-timeout", f"{int(self.max_duration * 2 + 30)}s",
                "-timeout_error",
            ]
        )  # fmt: skip

    def messages(self) -> list[SipMessage]:
        return self._sipp.messages()

    def answered_at(self) -> float | None:
        for m in self.messages():
            if m.direction == "received" and m.method == "INVITE" and m.status == 200:
                return m.time
        return None

    async def wait_answered(self, timeout: float = 30.0) -> float:
        """Wait until Asterisk answered; returns the wall time of the 200 OK."""
        deadline = time.monotonic() + timeout
        while (at := self.answered_at()) is None:
            if self._sipp.returncode is not None or time.monotonic() > deadline:
                raise TimeoutError(f"call to {self.did} not answered\n{self._sipp.describe()}")
            await asyncio.sleep(0.05)
        return at

    async def wait(self, timeout: float | None = None) -> CallerResult:
        """Wait for the call (the sipp process) to end; parse what sipp saw."""
        if timeout is None:
            timeout = self.max_duration + 30
        rc = await self._sipp.wait(timeout)
        return self.result(rc)

    def result(self, rc: int) -> CallerResult:
        msgs = self.messages()
        answered_at = None
        rejected = None
        bye_in = bye_out = None
        for m in msgs:
            if m.direction == "received" and m.method == "INVITE" and m.status is not None:
                if m.status == 200 and answered_at is None:
                    answered_at = m.time
                elif m.status >= 300 and rejected is None:
                    rejected = m.status
            if m.is_request and m.method == "BYE":
                if m.direction == "received" and bye_in is None:
                    bye_in = m.time
                if m.direction == "sent" and bye_out is None:
                    bye_out = m.time
        by: Literal["us", "them"] | None = None
        if bye_in is not None and (bye_out is None or bye_in <= bye_out):
            by = "them"
        elif bye_out is not None:
            by = "us"
        return CallerResult(
            answered=answered_at is not None,
            answered_at=answered_at,
            hung_up_by=by,
            bye_received_at=bye_in,
            bye_sent_at=bye_out,
            rejected_with=rejected,
            exit_code=rc,
            message_log=self._sipp.message_log,
            messages=msgs,
        )

    def describe(self) -> str:
        return self._sipp.describe()

    def stop(self) -> None:
        """Kill sipp if still running and remove its temp dir (unless IVR_KEEP_RUNS)."""
        self._sipp.cleanup()


def _info_xml(from_hdr: str, contact_user: str, cseq: int, digit: str, label: str) -> str:
    body = f"Signal={digit}\r\nDuration=160\r\n"
    return f"""  <send retrans="500">
    <![CDATA[

      INFO [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: {from_hdr};tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: {cseq} INFO
      Contact: <sip:{contact_user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/dtmf-relay
      Content-Length: [len]

{body}
    ]]>
  </send>
  <recv response="200" timeout="10000" ontimeout="{label}"/>
  <label id="{label}"/>"""


# ------------------------------------------------------------------ UAS (phone, carrier)


@dataclass(frozen=True)
class CallBehaviour:
    """What a phone/carrier does with one incoming INVITE.

    ``answer_after``: seconds of 180 Ringing before 200 OK (0 → answer at once);
    ``"never"`` → ring until CANCEL; ``"busy"`` → 486 Busy Here. After the answer:
    ``digits`` ``(seconds after answering, digit)``; ``hangup_after`` seconds → we
    send BYE, else wait for Asterisk's BYE up to ``max_duration``.
    """

    answer_after: float | Literal["never", "busy"] = 0.0
    digits: Sequence[tuple[float, str]] = ()
    hangup_after: float | None = None
    max_duration: float = 600.0


RING_FOREVER = CallBehaviour(answer_after="never")
BUSY = CallBehaviour(answer_after="busy")


@dataclass
class ReceivedCall:
    """An INVITE the peer received, and what became of that call."""

    call_id: str
    invited_at: float
    request_uri: str
    dialled: str  # user part of the request URI (the number the carrier must dial)
    from_name: str | None
    from_number: str
    headers: list[tuple[str, str]]
    answered_at: float | None = None
    rejected_with: int | None = None
    cancelled_at: float | None = None
    bye_received_at: float | None = None
    bye_sent_at: float | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    @property
    def ended(self) -> bool:
        return (
            self.cancelled_at is not None
            or self.bye_received_at is not None
            or self.bye_sent_at is not None
            or self.rejected_with is not None
        )


def calls_from_messages(msgs: Sequence[SipMessage]) -> list[ReceivedCall]:
    calls: dict[str, ReceivedCall] = {}
    for m in msgs:
        cid = m.call_id
        if m.direction == "received" and m.is_request and m.method == "INVITE":
            if cid in calls:
                continue  # retransmission (or re-INVITE)
            name, number, _ = parse_name_addr(m.header("From") or "")
            _, dialled, _ = parse_name_addr("<" + m.request_uri + ">")
            calls[cid] = ReceivedCall(
                call_id=cid,
                invited_at=m.time,
                request_uri=m.request_uri,
                dialled=dialled,
                from_name=name,
                from_number=number,
                headers=m.headers,
            )
            continue
        call = calls.get(cid)
        if call is None:
            continue
        if m.direction == "sent" and not m.is_request and m.method == "INVITE":
            status = m.status or 0
            if status == 200 and call.answered_at is None:
                call.answered_at = m.time
            elif status >= 300 and status != 487 and call.rejected_with is None:
                call.rejected_with = status
        elif m.is_request and m.method == "CANCEL" and m.direction == "received":
            call.cancelled_at = call.cancelled_at or m.time
        elif m.is_request and m.method == "BYE":
            if m.direction == "received":
                call.bye_received_at = call.bye_received_at or m.time
            else:
                call.bye_sent_at = call.bye_sent_at or m.time
    return list(calls.values())


class _SipUas:
    """A sipp UAS serving every INVITE sent to ``host:port`` until stopped."""

    def __init__(
        self,
        instance: AsteriskInstance,
        label: str,
        host: str,
        port: int,
        behaviours: CallBehaviour | Sequence[CallBehaviour],
        *,
        contact_user: str,
        register: tuple[str, str] | None = None,
    ) -> None:
        self.instance = instance
        self.host = host
        self.port = port
        self.register = register
        self.behaviours = (
            [behaviours] if isinstance(behaviours, CallBehaviour) else list(behaviours)
        )
        if not self.behaviours:
            raise ValueError("at least one CallBehaviour")
        self._sipp = _Sipp(label)
        self.media_port = media_port(host)
        self.scenario = self._sipp.write("uas.xml", self._render_uas(contact_user))
        self.register_scenario: Path | None = None
        if register is not None:
            user, password = register
            self.register_scenario = self._sipp.write(
                "register.xml", _render("register.xml", user=user, password=password)
            )

    def _render_uas(self, contact_user: str) -> str:
        n = len(self.behaviours)
        tests, jumps, blocks = [], [], []
        for i, b in enumerate(self.behaviours):
            cmp_ = "greater_than_equal" if i == n - 1 else "equal"
            tests.append(
                f'      <test assign_to="use{i}" variable="count" compare="{cmp_}"'
                f' value="{i + 1}"/>'
            )
            jumps.append(f'  <nop test="use{i}" next="b{i}"/>')
            blocks.append(self._render_behaviour(i, b, contact_user))
        jumps.append('  <nop next="b0"/>')
        return _render(
            "uas.xml",
            dispatch_tests="\n".join(tests),
            dispatch_jumps="\n".join(jumps),
            behaviours="\n".join(blocks),
        )

    def _render_behaviour(self, i: int, b: CallBehaviour, contact_user: str) -> str:
        ringing = _render("uas_ringing.xml", contact_user=contact_user)
        if b.answer_after == "busy":
            busy = (SIPP_DIR / "uas_busy.xml").read_text()
            return _render("uas_behaviour.xml", b=f"b{i}", ring="", answer=busy)
        if b.answer_after == "never":
            wait = (
                f'  <recv request="CANCEL" timeout="{_ms(b.max_duration)}" ontimeout="end"'
                ' next="cancelled"/>'
            )
            return _render("uas_behaviour.xml", b=f"b{i}", ring=ringing + wait, answer="")
        for _, d in b.digits:
            _pcap(d)
        ring = ringing
        if b.answer_after > 0:
            ring += (
                f'  <recv request="CANCEL" timeout="{_ms(b.answer_after)}"'
                f' ontimeout="b{i}ans" next="cancelled"/>\n  <label id="b{i}ans"/>'
            )
        answer = _render("uas_answer.xml", contact_user=contact_user)
        events = [(t, d) for t, d in b.digits]
        timeline, last = _timeline(events, f"b{i}", lambda _i, d: _play(d))
        answer += "\n" + timeline
        end = b.hangup_after if b.hangup_after is not None else b.max_duration
        if end > last:
            answer += (
                f'\n  <recv request="BYE" timeout="{_ms(end - last)}" ontimeout="ourbye"'
                ' next="gotbye"/>'
            )
        answer += '\n  <nop next="ourbye"/>'
        return _render("uas_behaviour.xml", b=f"b{i}", ring=ring, answer=answer)

    def start(self) -> None:
        inst = self.instance
        common = [
            "-i", self.host,
            "-p", str(self.port),
            "-mi", self.host,
            "-mp", str(self.media_port),
            "-aa",  # 200 OK to OPTIONS/INFO/NOTIFY/UPDATE outside the scenario
        ]  # fmt: skip
        if self.register_scenario is None:
            self._sipp.start(["-sf", str(self.scenario), *common])
        else:
            self._sipp.start(
                [
                    f"127.0.0.1:{inst.sip_port}",
                    "-sf", str(self.register_scenario),
                    "-oocsf", str(self.scenario),
                    "-m", "1",
                    *common,
                ]
            )  # fmt: skip

    def stop(self) -> None:
        """Kill sipp and remove its temp dir (unless IVR_KEEP_RUNS)."""
        self._sipp.cleanup()

    @property
    def message_log(self) -> Path:
        return self._sipp.message_log

    def messages(self) -> list[SipMessage]:
        return self._sipp.messages()

    def calls(self) -> list[ReceivedCall]:
        """Every INVITE received so far, in order, with what became of each call."""
        return calls_from_messages(self.messages())

    async def wait_for_calls(
        self,
        count: int = 1,
        timeout: float = 30.0,
        predicate: Callable[[ReceivedCall], bool] | None = None,
    ) -> list[ReceivedCall]:
        """Wait until ``count`` received calls (matching ``predicate``) exist."""
        deadline = time.monotonic() + timeout
        while True:
            calls = [c for c in self.calls() if predicate is None or predicate(c)]
            if len(calls) >= count:
                return calls
            if self._sipp.returncode is not None:
                raise SipError(f"sipp exited ({self._sipp.returncode})\n{self.describe()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(calls)} of {count} calls after {timeout:.0f}s\n{self.describe()}"
                )
            await asyncio.sleep(0.05)

    async def wait_registered(self, timeout: float = 30.0) -> None:
        """(Registering phones) wait for the 200 OK to our REGISTER."""
        deadline = time.monotonic() + timeout
        while not any(
            m.direction == "received" and m.method == "REGISTER" and m.status == 200
            for m in self.messages()
        ):
            if self._sipp.returncode is not None or time.monotonic() > deadline:
                raise TimeoutError(f"not registered\n{self.describe()}")
            await asyncio.sleep(0.05)

    def describe(self) -> str:
        return self._sipp.describe()


class SipPhone(_SipUas):
    """Agent softphone for endpoint ``agent`` of the instance.

    ``agent1..agentN`` listen on their static contact (``instance.agent_ports``);
    ``"regagent"`` registers (digest auth, ``instance.reg_password``) from a free port
    first — call ``await phone.wait_registered()`` before originating to it.
    """

    def __init__(
        self,
        instance: AsteriskInstance,
        agent: str,
        behaviours: CallBehaviour | Sequence[CallBehaviour] = CallBehaviour(),
    ) -> None:
        if agent == instance.reg_user:
            port = free_port("127.0.0.1")
            register: tuple[str, str] | None = (agent, instance.reg_password)
        elif agent in instance.agent_ports:
            port = instance.agent_ports[agent]
            register = None
        else:
            raise ValueError(f"unknown agent {agent!r}; have {sorted(instance.agent_ports)}")
        self.agent = agent
        super().__init__(
            instance, f"phone-{agent}", "127.0.0.1", port, behaviours,
            contact_user=agent, register=register,
        )  # fmt: skip


class SipCarrier(_SipUas):
    """The carrier side of the trunk: receives Asterisk's outbound calls (callbacks).

    ``ReceivedCall.dialled`` is the number Asterisk asked the carrier to dial and
    ``from_number``/``from_name`` the caller id it presented.
    """

    def __init__(
        self,
        instance: AsteriskInstance,
        behaviours: CallBehaviour | Sequence[CallBehaviour] = CallBehaviour(),
    ) -> None:
        super().__init__(
            instance, "carrier", instance.carrier_host, instance.carrier_port, behaviours,
            contact_user="carrier",
        )  # fmt: skip


# ------------------------------------------------------------------ faulty trunk

_REASONS = {
    404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable",
    500: "Server Internal Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 603: "Decline",
}  # fmt: skip


@dataclass(frozen=True)
class TrunkFault(CallBehaviour):
    """A carrier that fails the INVITE itself (not the customer's phone): ``"silent"``
    takes the INVITE and sends nothing back (no 100, no final response) for
    ``max_duration`` seconds -- make it longer than the dial timeout -- and only then a
    late 408, so Asterisk's INVITE transaction (which outlives the call, up to Timer B =
    32 s) ends instead of retransmitting to the next test's carrier; ``"trying"`` sends
    100 Trying and then nothing more (Asterisk CANCELs it); a status code (e.g. 503) is
    sent at once as the final response. Usable only with ``FaultyCarrier``."""

    reply: int | Literal["silent", "trying"] = "silent"


TRUNK_SILENT = TrunkFault(reply="silent", max_duration=8.0)
TRUNK_503 = TrunkFault(reply=503)


class FaultyCarrier(SipCarrier):
    """``SipCarrier`` whose behaviours may also be ``TrunkFault``s."""

    def _render_behaviour(self, i: int, b: CallBehaviour, contact_user: str) -> str:
        if not isinstance(b, TrunkFault):
            return super()._render_behaviour(i, b, contact_user)
        if isinstance(b.reply, int):
            reject = _render("uas_reject.xml", status=str(b.reply),
                             reason=_REASONS.get(b.reply, "Failure"))
            return _render("uas_behaviour.xml", b=f"b{i}", ring="", answer=reject)
        wait = _render("uas_silent.xml", b=f"b{i}", max_ms=str(_ms(b.max_duration)))
        if b.reply == "trying":
            wait = (SIPP_DIR / "uas_trying.xml").read_text() + wait
        return _render("uas_behaviour.xml", b=f"b{i}", ring=wait, answer="")


# ------------------------------------------------------------------ many callers, one sipp


@dataclass(frozen=True)
class CallPlan:
    """One call of ``SipCallers``: from ``number``; ``infos`` are ``(seconds after the
    answer, digit)`` sent as SIP INFO; ``hangup_after`` seconds after the answer we send
    BYE, else we wait for Asterisk's BYE up to ``max_duration`` (then hang up)."""

    number: str
    infos: Sequence[tuple[float, str]] = ()
    hangup_after: float | None = None
    max_duration: float = 60.0


@dataclass
class PlannedCallResult:
    plan: CallPlan
    call_id: str
    answered_at: float | None
    rejected_with: int | None
    bye_received_at: float | None
    bye_sent_at: float | None

    @property
    def hung_up_by(self) -> Literal["us", "them"] | None:
        bye_in, bye_out = self.bye_received_at, self.bye_sent_at
        if bye_in is not None and (bye_out is None or bye_in <= bye_out):
            return "them"
        return "us" if bye_out is not None else None


class SipCallers:
    """Many customers calling ``did`` from ONE sipp process (``-m len(plans)``), a new
    call every ``interval`` seconds, each from its own number with its own plan (sipp
    numbers the calls; an injection file maps call k to plan k)."""

    def __init__(
        self,
        instance: AsteriskInstance,
        did: str,
        plans: Sequence[CallPlan],
        *,
        interval: float = 0.5,
        label: str = "callers",
    ) -> None:
        if not plans:
            raise ValueError("at least one CallPlan")
        if len({p.number for p in plans}) != len(plans):
            raise ValueError("one number per call")
        self.instance = instance
        self.did = did
        self.plans = list(plans)
        self.interval = interval
        self._sipp = _Sipp(f"{label}-{did}")
        host = instance.carrier_host
        self.local_port = free_port(host)
        self.media_port = media_port(host)
        from_hdr = f"<sip:[field0]@{host}>"
        longest = max(p.max_duration for p in plans)
        tests, jumps, blocks = [], [], []
        for k, plan in enumerate(plans):
            if plan.hangup_after is not None and plan.hangup_after > plan.max_duration:
                raise ValueError("hangup_after > max_duration")
            tests.append(f'      <test assign_to="plan{k}" variable="plannum" compare="equal"'
                         f' value="{k}"/>')
            jumps.append(f'  <nop test="plan{k}" next="p{k}"/>')
            cseq = [1]

            def render_event(i: int, digit: str, k: int = k, cseq: list[int] = cseq) -> str:
                cseq[0] += 1
                return _info_xml(from_hdr, "[field0]", cseq[0], digit, f"p{k}i{i}")

            timeline, last = _timeline(list(plan.infos), f"p{k}", render_event)
            end = plan.hangup_after if plan.hangup_after is not None else plan.max_duration
            if end > last:
                timeline += (f'\n  <recv request="BYE" timeout="{_ms(end - last)}"'
                             ' ontimeout="us_bye" next="gotbye"/>')
            timeline += '\n  <nop next="us_bye"/>'
            blocks.append(f'  <label id="p{k}"/>\n{timeline}')
        jumps.append('  <nop next="us_bye"/>')  # no plan: should not happen
        failures = "\n".join(
            f'  <recv response="{c}" optional="true" next="rejected"'
            f' timeout="{_ms(longest)}" ontimeout="cancel"/>'
            for c in _FAILURE_CODES
        )
        self.scenario = self._sipp.write("callers.xml", _render(
            "callers.xml",
            answer_timeout_ms=str(_ms(longest)),
            failures=failures,
            dispatch_tests="\n".join(tests),
            dispatch_jumps="\n".join(jumps),
            plans="\n".join(blocks),
        ))
        self.injection = self._sipp.write(
            "plans.csv",
            "SEQUENTIAL\n" + "".join(f"{p.number};{k};\n" for k, p in enumerate(plans)),
        )
        self.max_duration = longest

    def start(self) -> None:
        """Start the calls (returns at once; they follow each other every ``interval``)."""
        inst = self.instance
        host = inst.carrier_host
        n = len(self.plans)
        self._sipp.start(
            [
                f"127.0.0.1:{inst.sip_port}",
                "-sf", str(self.scenario),
                "-inf", str(self.injection),
                "-s", self.did,
                "-i", host,
                "-p", str(self.local_port),
                "-mi", host,
                "-mp", str(self.media_port),
                "-m", str(n),
                "-l", str(n),
                "-r", "1",
                "-rp", str(_ms(self.interval)),
                "-timeout", f"{int(self.max_duration * 2 + n * self.interval + 30)}s",
                "-timeout_error",
            ]
        )  # fmt: skip

    @property
    def returncode(self) -> int | None:
        return self._sipp.returncode

    async def wait(self, timeout: float) -> list[PlannedCallResult]:
        """Wait for every call (the sipp process) to end; what each call saw."""
        await self._sipp.wait(timeout)
        return self.results()

    def results(self) -> list[PlannedCallResult]:
        by_number = {p.number: p for p in self.plans}
        out: dict[str, PlannedCallResult] = {}
        for m in self.messages():
            cid = m.call_id
            if cid not in out:
                if not (m.direction == "sent" and m.method == "INVITE" and m.is_request):
                    continue
                _, number, _ = parse_name_addr(m.header("From") or "")
                plan = by_number.get(number)
                if plan is None:
                    continue
                out[cid] = PlannedCallResult(plan, cid, None, None, None, None)
            r = out[cid]
            if m.direction == "received" and m.method == "INVITE" and m.status is not None:
                if m.status == 200 and r.answered_at is None:
                    r.answered_at = m.time
                elif m.status >= 300 and r.rejected_with is None:
                    r.rejected_with = m.status
            if m.is_request and m.method == "BYE":
                if m.direction == "received" and r.bye_received_at is None:
                    r.bye_received_at = m.time
                if m.direction == "sent" and r.bye_sent_at is None:
                    r.bye_sent_at = m.time
        return list(out.values())

    def messages(self) -> list[SipMessage]:
        return self._sipp.messages()

    def describe(self) -> str:
        return self._sipp.describe()

    def stop(self) -> None:
        self._sipp.cleanup()


# ------------------------------------------------------------------ quick start: demo caller


@dataclass
class DemoCall:
    """The demo caller's own call to the DID, as its sipp saw it."""

    call_id: str
    challenged_with: int | None  # 401/407 to the first INVITE (digest auth asked)
    answered_at: float | None  # wall time of the 200 OK to the authenticated INVITE
    rejected_with: int | None  # final failure status after the challenge, if any
    bye_received_at: float | None
    bye_sent_at: float | None

    @property
    def hung_up_by(self) -> Literal["us", "them"] | None:
        bye_in, bye_out = self.bye_received_at, self.bye_sent_at
        if bye_in is not None and (bye_out is None or bye_in <= bye_out):
            return "them"
        return "us" if bye_out is not None else None

    @property
    def ended(self) -> bool:
        return (self.bye_received_at is not None or self.bye_sent_at is not None
                or self.rejected_with is not None)


class DemoCallerPhone(_SipUas):
    """The README quick start's demo caller softphone (sandbox ``demo_caller=True``).

    ONE sipp process on 127.0.0.1, as one softphone: it REGISTERs as ``caller`` with
    ``instance.caller_password``, then (once registered) dials ``did`` as that account:
    From user ``caller`` (Asterisk identifies the endpoint by it and presents the
    endpoint's own caller id, whatever display name ``from_name`` says), the INVITE's
    digest challenge (401/407) answered with a second INVITE. ``digits``: ``(seconds
    after the answer, digit)`` played as RFC 4733 RTP; then it waits for Asterisk's BYE
    up to ``max_duration`` (then hangs up). Calls Asterisk sends to the registered
    contact (the callback) follow ``behaviours`` as on any ``SipPhone``: ``calls()``.
    """

    user = "caller"

    def __init__(
        self,
        instance: AsteriskInstance,
        did: str,
        *,
        digits: Sequence[tuple[float, str]] = (),
        from_name: str = "Softphone",
        behaviours: CallBehaviour | Sequence[CallBehaviour] = CallBehaviour(),
        max_duration: float = 60.0,
    ) -> None:
        if not instance.caller_password:
            raise SipError("no demo caller account: start the sandbox with demo_caller=True")
        super().__init__(
            instance, "demo-caller", "127.0.0.1", free_port("127.0.0.1"), behaviours,
            contact_user=self.user,
        )  # fmt: skip
        self.did = did
        for _, d in digits:
            _pcap(d)
        timeline, last = _timeline([(t, d) for t, d in digits], "c", lambda _i, d: _play(d))
        timeline += (
            f'\n  <recv request="BYE" timeout="{_ms(max(max_duration - last, 0.001))}"'
            ' ontimeout="us_bye" next="gotbye"/>'
        )
        failures = "\n".join(
            f'  <recv response="{c}" optional="true" next="rejected"'
            f' timeout="{_ms(max_duration)}" ontimeout="cancel"/>'
            for c in _FAILURE_CODES
        )
        self.register_scenario = self._sipp.write(
            "qs_demo_caller.xml",
            _render(
                "qs_demo_caller.xml",
                user=self.user,
                password=instance.caller_password,
                from_name=f'"{from_name}"',
                answer_timeout_ms=str(_ms(max_duration)),
                failures=failures,
                timeline=timeline,
            ),
        )

    def start(self) -> None:
        """Register, then place the call (returns at once)."""
        assert self.register_scenario is not None
        self._sipp.start(
            [
                f"127.0.0.1:{self.instance.sip_port}",
                "-sf", str(self.register_scenario),
                "-oocsf", str(self.scenario),
                "-s", self.did,
                "-m", "2",  # sipp call 1 registers, call 2 is the call to the DID
                "-i", self.host,
                "-p", str(self.port),
                "-mi", self.host,
                "-mp", str(self.media_port),
                "-aa",
            ]
        )  # fmt: skip

    def own_call(self) -> DemoCall | None:
        """The call to the DID (None before its INVITE went out)."""
        msgs = self.messages()
        cid = next((m.call_id for m in msgs if m.direction == "sent" and m.is_request
                    and m.method == "INVITE"), None)
        if cid is None:
            return None
        call = DemoCall(cid, None, None, None, None, None)
        for m in msgs:
            if m.call_id != cid:
                continue
            if m.direction == "received" and not m.is_request and m.method == "INVITE":
                status = m.status or 0
                if status in (401, 407) and call.challenged_with is None:
                    call.challenged_with = status
                elif status == 200 and call.answered_at is None:
                    call.answered_at = m.time
                elif status >= 300 and status not in (401, 407) and call.rejected_with is None:
                    call.rejected_with = status
            elif m.is_request and m.method == "BYE":
                if m.direction == "received":
                    call.bye_received_at = call.bye_received_at or m.time
                else:
                    call.bye_sent_at = call.bye_sent_at or m.time
        return call

    async def wait_own_call(
        self, predicate: Callable[[DemoCall], bool], timeout: float = 30.0
    ) -> DemoCall:
        """Wait until the call to the DID satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            call = self.own_call()
            if call is not None and predicate(call):
                return call
            if self._sipp.returncode is not None:
                raise SipError(f"sipp exited ({self._sipp.returncode})\n{self.describe()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo caller's call: {call} after {timeout:.0f}s\n"
                                   f"{self.describe()}")
            await asyncio.sleep(0.05)
