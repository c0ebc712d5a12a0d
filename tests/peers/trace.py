"""What sipp saw: its message trace (``-trace_msg``) parsed into SIP messages.

Every peer's results come from here: what sipp actually sent and received, with
wall-clock times, never from what the scenario meant to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal


class Headers:
    """Header lookup for anything that holds SIP headers (name, value), in order."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass
class SipMessage(Headers):
    """One SIP message from sipp's ``-trace_msg`` log."""

    time: float  # wall clock (epoch seconds)
    direction: Literal["sent", "received"]
    first_line: str
    headers: list[tuple[str, str]]
    body: str

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


def who_hung_up(
    bye_received_at: float | None, bye_sent_at: float | None
) -> Literal["us", "them"] | None:
    """Whose BYE came first: ``"them"`` (received), ``"us"`` (sent), or None (no BYE)."""
    if bye_received_at is not None and (bye_sent_at is None or bye_received_at <= bye_sent_at):
        return "them"
    return "us" if bye_sent_at is not None else None
