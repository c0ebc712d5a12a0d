"""The sipp layer under every peer: the sipp subprocess, and the scenario XML rendered
from the templates in ``tests/sipp/``.

sipp cannot take injected values in ``<pause>`` or ``recv timeout`` (sipp 3.6), so every
peer renders its scenario from the templates into a temp dir. Every wait inside a call
is a ``<recv request="BYE" timeout=...>`` so the far end may hang up at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rig.sandbox import die_with_parent_preexec, stop_process_group
from tests.peers.trace import SipMessage, parse_trace

SIPP_DIR = Path(__file__).resolve().parent.parent / "sipp"
PCAP_DIR = Path("/usr/share/sip-tester")
_PCAP_NAMES = {"*": "star", "#": "pound"}
_FAILURE_CODES = (
    400, 401, 403, 404, 405, 407, 408, 410, 415, 420, 480, 481, 482, 483, 484, 485,
    486, 487, 488, 491, 500, 501, 502, 503, 504, 580, 600, 603, 604, 606,
)  # fmt: skip


class SipError(RuntimeError):
    pass


# ------------------------------------------------------------------ scenario rendering


def render(template: str, **values: str) -> str:
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


def dtmf_pcap(digit: str) -> Path:
    if len(digit) != 1 or digit not in "0123456789*#":
        raise ValueError(f"not a DTMF digit: {digit!r}")
    path = PCAP_DIR / f"dtmf_2833_{_PCAP_NAMES.get(digit, digit)}.pcap"
    if not path.exists():
        raise SipError(f"missing {path} (package sip-tester)")
    return path


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def render_timeline(
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
                f'  <recv request="BYE" timeout="{ms(at - now)}" ontimeout="{label}"'
                ' next="gotbye"/>\n'
                f'  <label id="{label}"/>'
            )
            now = at
        parts.append(render_event(i, what))
    return "\n".join(parts), now


def play_digit(digit: str) -> str:
    return f'  <nop><action><exec play_pcap_audio="{dtmf_pcap(digit)}"/></action></nop>'



def info_xml(from_hdr: str, contact_user: str, cseq: int, digit: str, label: str) -> str:
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



def failure_recvs(timeout: float) -> str:
    """An optional ``<recv>`` of every final failure status to our INVITE (then
    ``rejected``); nothing within ``timeout`` seconds -> ``cancel``."""
    return "\n".join(
        f'  <recv response="{c}" optional="true" next="rejected"'
        f' timeout="{ms(timeout)}" ontimeout="cancel"/>'
        for c in _FAILURE_CODES
    )


# ------------------------------------------------------------------ sipp process


class SippProcess:
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
        stop_process_group(proc, timeout)

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


_STARTED: list[SippProcess] = []


def stop_all() -> None:
    """Stop every sipp started so far (a test that failed midway leaves its peers)."""
    while _STARTED:
        _STARTED.pop().stop()

