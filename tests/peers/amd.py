"""Customers' phones that say something when they answer: a person ("Hello?", then
silence) or an answering machine (a long greeting), for answering-machine detection.

* ``Greeting``   — a ``CallBehaviour`` that, once answered, streams an audio file to
  Asterisk as RTP (sipp ``exec rtp_stream``, PCMU).
* ``AmdCarrier`` — ``SipCarrier`` whose behaviours may also be ``Greeting``s.
* ``speech()``   — renders a text with espeak-ng into the raw 8 kHz u-law file sipp
  streams (made at run time into a test's ``tmp_path``; nothing is committed).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.peers.sipp import SipError, ms, render
from tests.peers.uas import CallBehaviour, SipCarrier

HUMAN_TEXT = "Hello?"
MACHINE_TEXT = (
    "Hi, you have reached the voicemail of Jordan Smith. I cannot take your call right "
    "now. Please leave your name, your number and a short message after the tone, and I "
    "will call you back as soon as I can."
)


@dataclass(frozen=True)
class Greeting(CallBehaviour):
    """Answer after ``answer_after`` seconds, then stream ``audio`` (raw 8 kHz u-law)
    once; then, as any behaviour, hang up at ``hangup_after`` or wait for Asterisk's BYE
    up to ``max_duration``."""

    audio: Path = Path()


def speech(text: str, path: Path, *, silence_after: float = 0.0) -> Path:
    """``text`` spoken by espeak-ng, as raw 8 kHz mono u-law (what sipp's rtp_stream
    sends as PCMU), followed by ``silence_after`` seconds of silence."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SipError(f"{tool} is not installed (apt-get install {tool})")
    wav = path.with_suffix(".tts.wav")
    subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "160", "-w", str(wav), text],
                   check=True, capture_output=True)
    subprocess.run(["sox", str(wav), "-t", "raw", "-r", "8000", "-c", "1", "-e", "u-law",
                    str(path), "pad", "0", f"{silence_after:.2f}"],
                   check=True, capture_output=True)
    wav.unlink()
    return path


def duration(path: Path) -> float:
    """Seconds of audio in a raw 8 kHz u-law file (one byte a sample)."""
    return path.stat().st_size / 8000


class AmdCarrier(SipCarrier):
    """``SipCarrier`` whose behaviours may also be ``Greeting``s."""

    def _render_behaviour(self, i: int, b: CallBehaviour, contact_user: str) -> str:
        if not isinstance(b, Greeting):
            return super()._render_behaviour(i, b, contact_user)
        if not isinstance(b.answer_after, float | int) or not b.audio.is_file():
            raise SipError("a Greeting answers after some seconds and streams a file")
        ring = render("uas_ringing.xml", contact_user=contact_user)
        if b.answer_after > 0:
            ring += (
                f'  <recv request="CANCEL" timeout="{ms(b.answer_after)}"'
                f' ontimeout="b{i}ans" next="cancelled"/>\n  <label id="b{i}ans"/>'
            )
        answer = render("uas_answer_stream.xml", contact_user=contact_user,
                        audio=str(b.audio))
        end = b.hangup_after if b.hangup_after is not None else b.max_duration
        answer += (
            f'\n  <recv request="BYE" timeout="{ms(end)}" ontimeout="ourbye"'
            ' next="gotbye"/>\n  <nop next="ourbye"/>'
        )
        return render("uas_behaviour.xml", b=f"b{i}", ring=ring, answer=answer)
