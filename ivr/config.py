"""One YAML file -> frozen, typed configuration.

Every error names the key (dotted path) and the line, and nothing starts (SPEC R22).
Unknown keys are errors too: a misspelt ``max_ewt`` silently ignored would mean a queue
that never offers callbacks. Secrets may come from the environment so the file itself
can be shared: ``IVR_ARI_URL``, ``IVR_ARI_USER``, ``IVR_ARI_PASSWORD``, ``IVR_API_TOKEN``.

"check-config = run": whatever ``ivr run`` would refuse or crash on is refused here, by
``load()``, so ``ivr check-config`` and ``ivr run`` accept exactly the same files. The
file is read as strict UTF-8; YAML aliases (``*name``) are refused (an operator's config
needs none, and they are how "billion laughs" files explode) and nesting is bounded.

Numbers (SPEC R13, ``ivr.domain.numbers``): the top-level ``region`` (ISO 3166 code, e.g.
US, GB, DE) is required; each queue may override it (``region``), list the countries a
callback may go to (``callback_regions``, default: the queue's region only) and the
number types it may dial (``number_types``, default ``numbers.DEFAULT_TYPES``).
``allowed_numbers`` / ``denied_numbers`` (default: none) are extra patterns on top of
that policy. Each queue's ``NumberGuard`` is built here once, so a bad value is a config
error, never a crash at run time.

``outbound.dial`` is a dial string template whose only fields are ``{number}`` (the same
as ``{e164}``: ``+12015550123``), ``{e164}`` and ``{national}`` (the number as dialled
inside its country: ``2015550123``; ``02079460000`` in GB), e.g. ``PJSIP/{number}@carrier``
or ``PJSIP/{national}@carrier``. ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ivr.domain import numbers
from ivr.domain.numbers import NumberGuard, PhoneNumber

# Prompt ids the flows play; each must exist in the manifest for every configured language.
PROMPT_IDS: tuple[str, ...] = (
    "offer",
    "offer_alternate",
    "confirmation",
    "already_scheduled",
    "enter_number",
    "number_readback",
    "confirm_number",
    "invalid_number",
    "back_to_queue",
    "request_failed",
    "unavailable",
    "preview_intro",
    "preview_waited",
    "minutes",
    "preview_accept",
    "callback_failed",
    "verify_customer",
    "connecting",
)

# Fields ``outbound.dial`` may use (see the module docstring).
DIAL_FIELDS: tuple[str, ...] = ("number", "e164", "national")

# YAML nesting deeper than this is refused (the deepest real key is 4 levels down).
MAX_DEPTH = 32


class ConfigError(Exception):
    """A configuration problem, with the key path and line when known."""

    def __init__(self, message: str, key: str = "", line: int | None = None) -> None:
        where = key or "config"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{where}: {message}")
        self.key = key
        self.line = line


# --------------------------------------------------------------------------- typed config


@dataclass(frozen=True)
class AriConfig:
    url: str
    user: str
    password: str
    app: str


@dataclass(frozen=True)
class HttpConfig:
    bind: str
    port: int
    api_token: str


@dataclass(frozen=True)
class PromptConfig:
    dir: Path
    """Local folder with ``manifest.yaml`` and the files (validated at start)."""
    asterisk_dir: str
    """The same folder as Asterisk sees it (``sound:<asterisk_dir>/<file>``)."""
    language: str
    files: Mapping[str, Mapping[str, str]]
    """language -> prompt id -> file path relative to ``dir``, without extension."""

    def uri(self, prompt_id: str, language: str | None = None,
            overrides: Mapping[str, str] | None = None) -> str:
        rel = (overrides or {}).get(prompt_id)
        if rel is None:
            rel = self.files[language or self.language][prompt_id]
        return f"sound:{self.asterisk_dir.rstrip('/')}/{rel}"


# End of a range written as 24:00 (open until midnight).
END_OF_DAY = time.max


@dataclass(frozen=True)
class BusinessHours:
    timezone: str
    days: Mapping[int, tuple[tuple[time, time], ...]]
    """weekday (0 = Monday) -> opening ranges, sorted and merged; an end of
    ``END_OF_DAY`` means open until midnight. A day not listed is closed."""

    def _local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, ZoneInfo(self.timezone))

    def _range_at(self, weekday: int, t: time) -> tuple[time, time] | None:
        for a, b in self.days.get(weekday, ()):
            if a <= t and (t < b or b == END_OF_DAY):
                return a, b
        return None

    def is_open(self, now: float) -> bool:
        local = self._local(now)
        return self._range_at(local.weekday(), local.time()) is not None

    def seconds_to_close(self, now: float) -> float:
        """Seconds until the current opening ends (0 when closed). A range open until
        midnight continues into the next day's range that starts at 00:00."""
        local = self._local(now)
        found = self._range_at(local.weekday(), local.time())
        if found is None:
            return 0.0
        day, end = local.date(), found[1]
        for _ in range(7):
            if end != END_OF_DAY:
                break
            nxt = day + timedelta(days=1)
            cont = [b for a, b in self.days.get(nxt.weekday(), ()) if a == time(0)]
            if not cont:
                break
            day, end = nxt, cont[0]
        zone = ZoneInfo(self.timezone)
        if end == END_OF_DAY:
            close = datetime.combine(day + timedelta(days=1), time(0), zone)
        else:
            close = datetime.combine(day, end, zone)
        # Via timestamps: aware datetimes in one zone subtract as wall clock (DST).
        return max(0.0, close.timestamp() - now)


@dataclass(frozen=True)
class QueueConfig:
    name: str
    did: str
    caller_id: str
    moh_class: str
    language: str
    max_waiting: int | None
    max_ewt: float | None
    first_offer_after: float
    repeat_offer_every: float
    region: str
    """ISO 3166 code numbers are parsed in (caller ids, keypad entries)."""
    callback_regions: tuple[str, ...]
    """Countries a callback may dial (default: ``region`` only)."""
    number_types: tuple[str, ...]
    """``numbers.NUMBER_TYPES`` a callback may dial (default ``numbers.DEFAULT_TYPES``)."""
    allowed_numbers: tuple[str, ...]
    denied_numbers: tuple[str, ...]
    alternate_number: bool
    retry_interval: float
    max_attempts: int
    expire_after: float
    ring_timeout: float
    preview_timeout: float
    verify_customer: bool
    wrap_up: float
    hours: BusinessHours | None
    stop_offers_before_close: float
    prompts: Mapping[str, str] = field(default_factory=dict)

    def number_guard(self) -> NumberGuard:
        """This queue's number guard (R13). The loader builds one for every queue, so
        for a loaded config this never raises."""
        return NumberGuard(
            self.region,
            regions=self.callback_regions,
            types=self.number_types,
            allowed=self.allowed_numbers,
            denied=self.denied_numbers,
        )


@dataclass(frozen=True)
class AgentConfig:
    id: str
    name: str
    endpoint: str
    queues: tuple[str, ...]


@dataclass(frozen=True)
class OutboundConfig:
    dial: str
    """Dial string template (validated by the loader). Fields: ``{number}`` = ``{e164}``
    (``+12015550123``), ``{national}`` (as dialled inside the number's country:
    ``2015550123``; ``02079460000`` in GB). Render it with ``dial_string()``."""
    dial_timeout: float

    def dial_string(self, number: PhoneNumber) -> str:
        """The endpoint to originate a callback to ``number`` on."""
        return self.dial.format(number=number.e164, e164=number.e164, national=number.national)


@dataclass(frozen=True)
class Config:
    ari: AriConfig
    http: HttpConfig
    store_path: Path
    prompts: PromptConfig
    outbound: OutboundConfig
    queues: Mapping[str, QueueConfig]
    agents: Mapping[str, AgentConfig]
    log_level: str
    lines: Mapping[str, int] = field(default_factory=dict)
    """Dotted key -> line in the file, for every key written there (error messages
    about values checked after loading, e.g. ``store.path``)."""

    def line_of(self, key: str) -> int | None:
        """The line of ``key``, else of its nearest written parent."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return None


# --------------------------------------------------------------------------- YAML with lines


class _Doc:
    """A YAML mapping with the line of every key, for error messages."""

    def __init__(self, node: yaml.MappingNode, path: str,
                 lines: dict[str, int] | None = None) -> None:
        self.path = path
        self.line = node.start_mark.line + 1
        self.lines: dict[str, int] = {} if lines is None else lines
        self.items: dict[str, tuple[yaml.Node, int]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise ConfigError("keys must be plain words", path, k.start_mark.line + 1)
            if k.value in self.items:
                raise ConfigError("duplicate key", self.key(k.value), k.start_mark.line + 1)
            self.items[k.value] = (v, k.start_mark.line + 1)
            self.lines[self.key(k.value)] = k.start_mark.line + 1
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def err(self, name: str, message: str) -> ConfigError:
        line = self.items[name][1] if name in self.items else self.line
        return ConfigError(message, self.key(name), line)

    def has(self, name: str) -> bool:
        return name in self.items and not _is_null(self.items[name][0])

    def node(self, name: str) -> yaml.Node:
        self.used.add(name)
        return self.items[name][0]

    def scalar(self, name: str, default: str | None = None) -> str:
        if not self.has(name):
            self.used.add(name)
            if default is None:
                raise self.err(name, "is required")
            return default
        n = self.node(name)
        if not isinstance(n, yaml.ScalarNode):
            raise self.err(name, "must be a single value")
        return str(n.value)

    def opt(self, name: str) -> str | None:
        if not self.has(name):
            self.used.add(name)
            return None
        return self.scalar(name)

    def sub(self, name: str, required: bool = True) -> _Doc | None:
        if not self.has(name):
            self.used.add(name)
            if required:
                raise self.err(name, "is required")
            return None
        n = self.node(name)
        if not isinstance(n, yaml.MappingNode):
            raise self.err(name, "must be a mapping")
        return _Doc(n, self.key(name), self.lines)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if not self.has(name):
            self.used.add(name)
            return default
        n = self.node(name)
        if isinstance(n, yaml.ScalarNode):
            return (str(n.value),)
        if not isinstance(n, yaml.SequenceNode) or not all(
            isinstance(i, yaml.ScalarNode) for i in n.value
        ):
            raise self.err(name, "must be a list of values")
        return tuple(str(i.value) for i in n.value)

    def children(self) -> Iterator[tuple[str, _Doc]]:
        for name in list(self.items):
            sub = self.sub(name)
            assert sub is not None
            yield name, sub

    def check_unknown(self) -> None:
        for name in self.items:
            if name not in self.used:
                raise self.err(name, "unknown key")


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``1.5h``, ``7d``, ``250ms`` or plain seconds -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _duration(doc: _Doc, name: str, default: str | None, lo: float | None = None,
              hi: float | None = None) -> float:
    raw = doc.scalar(name, default)
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise doc.err(name, str(exc)) from None
    if lo is not None and value < lo:
        raise doc.err(name, f"must be at least {lo:g}s")
    if hi is not None and value > hi:
        raise doc.err(name, f"must be at most {hi:g}s")
    return value


def _opt_duration(doc: _Doc, name: str, lo: float, hi: float) -> float | None:
    if doc.opt(name) is None:
        return None
    return _duration(doc, name, None, lo, hi)


def _int(doc: _Doc, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = doc.scalar(name, None if default is None else str(default))
    try:
        value = int(raw)
    except ValueError:
        raise doc.err(name, f"must be a whole number, not {raw!r}") from None
    if not lo <= value <= hi:
        raise doc.err(name, f"must be between {lo} and {hi}")
    return value


def _bool(doc: _Doc, name: str, default: bool) -> bool:
    raw = doc.scalar(name, "true" if default else "false").lower()
    if raw in ("true", "yes", "on", "1"):
        return True
    if raw in ("false", "no", "off", "0"):
        return False
    raise doc.err(name, f"must be true or false, not {raw!r}")


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def _weekdays(doc: _Doc, name: str) -> list[int]:
    """``mon``, ``mon-fri``, or a range that wraps past Sunday: ``fri-mon`` is fri, sat,
    sun, mon; ``mon-mon`` is Monday only."""
    spec = name.lower()
    if "-" in spec:
        a, _, b = spec.partition("-")
        if a not in _DAYS or b not in _DAYS:
            raise doc.err(name, "day range must look like mon-fri (or fri-mon)")
        first, last = _DAYS[a], _DAYS[b]
        return [(first + i) % 7 for i in range((last - first) % 7 + 1)]
    if spec in _DAYS:
        return [_DAYS[spec]]
    raise doc.err(name, "unknown day (use mon..sun or a range like mon-fri)")


def _merge(ranges: list[tuple[time, time]]) -> tuple[tuple[time, time], ...]:
    """Sorted, overlapping and touching ranges joined (so ``seconds_to_close`` sees
    where an opening really ends)."""
    out: list[tuple[time, time]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def _hours(doc: _Doc) -> BusinessHours:
    tz = doc.scalar("timezone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise doc.err("timezone", f"unknown time zone {tz!r} (use e.g. America/New_York)") \
            from None
    days: dict[int, list[tuple[time, time]]] = {}
    for name in list(doc.items):
        if name == "timezone":
            continue
        which = _weekdays(doc, name)
        ranges: list[tuple[time, time]] = []
        for r in doc.strings(name, ()):
            m = _RANGE.match(r.replace(" ", ""))
            if not m:
                raise doc.err(name, f"opening hours must look like 08:00-18:00, not {r!r}")
            h1, m1, h2, m2 = (int(x) for x in m.groups())
            if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
                raise doc.err(name, f"bad opening hours {r!r}")
            if (h2, m2) <= (h1, m1):
                raise doc.err(
                    name,
                    f"bad opening hours {r!r}: the end must be after the start (to stay "
                    "open past midnight, end at 24:00 and start the next day at 00:00)",
                )
            ranges.append((time(h1, m1), END_OF_DAY if h2 == 24 else time(h2, m2)))
        for d in which:
            days.setdefault(d, []).extend(ranges)
    doc.check_unknown()
    merged = {d: _merge(r) for d, r in days.items() if r}
    if not merged:
        raise ConfigError("no opening hours: list days, e.g. mon-fri: [\"08:00-18:00\"]",
                          doc.path, doc.lines.get(doc.path, doc.line))
    return BusinessHours(tz, merged)


def _patterns(doc: _Doc, name: str) -> tuple[str, ...]:
    patterns = doc.strings(name, ())
    for p in patterns:
        try:
            numbers.compile_pattern(p)
        except ValueError as exc:
            raise doc.err(name, f"{exc} (use _NXX. style, re:<regex> or a number)") from None
    return patterns


def _regions(doc: _Doc, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(r.strip().upper() for r in doc.strings(name, default))
    if not values:
        raise doc.err(name, "list at least one region, e.g. [US]")
    for r in values:
        if not numbers.known_region(r):
            raise doc.err(name, f"unknown region {r!r}: use ISO 3166 codes, e.g. US, GB, DE")
    return values


def _number_types(doc: _Doc) -> tuple[str, ...]:
    values = tuple(t.strip().lower() for t in doc.strings("number_types", numbers.DEFAULT_TYPES))
    if not values:
        raise doc.err("number_types", "list at least one number type, e.g. [fixed_line, mobile]")
    for t in values:
        if t not in numbers.NUMBER_TYPES:
            raise doc.err("number_types",
                          f"unknown number type {t!r} (known: {', '.join(numbers.NUMBER_TYPES)})")
    return values


def _region(doc: _Doc, default: str | None) -> str:
    if not doc.has("region"):
        doc.used.add("region")
        if default is not None:
            return default
        raise doc.err("region", "is required: set region: to your country's ISO 3166 code, "
                                "e.g. US, GB, DE (numbers are read and checked as that "
                                "country's numbers)")
    value = doc.scalar("region").strip().upper()
    if not numbers.known_region(value):
        raise doc.err("region", f"unknown region {value!r}: set region: to your country's "
                                "ISO 3166 code, e.g. US, GB, DE")
    return value


def _dial(doc: _Doc) -> str:
    dial = doc.scalar("dial")
    example = "e.g. PJSIP/{number}@carrier"
    try:
        parts = list(string.Formatter().parse(dial))
    except ValueError as exc:
        raise doc.err("dial", f"bad template {dial!r}: {exc} (write {{{{ or }}}} for a "
                              "literal brace)") from None
    fields = 0
    prefix = ""  # literal text before the first field
    for text, fname, spec, conversion in parts:
        if not fields:
            prefix += text
        if fname is None:
            continue
        fields += 1
        if fname not in DIAL_FIELDS:
            shown = f"{{{fname}}}" if fname else "{}"
            raise doc.err("dial", f"unknown field {shown} in {dial!r}: the fields are "
                                  f"{', '.join('{' + f + '}' for f in DIAL_FIELDS)}")
        if conversion is not None or spec:
            raise doc.err("dial", f"field {{{fname}}} in {dial!r} takes no !conversion "
                                  "or :format")
    if not fields:
        raise doc.err("dial", f"must contain the number as {{number}}, {example}")
    if not re.match(r"^[A-Za-z][A-Za-z0-9]*/", prefix):
        raise doc.err("dial", f"must start with a channel technology and '/', {example}")
    return dial


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (no "billion laughs") and deep nesting (no
    RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise ConfigError(
                "YAML aliases (*name) are not supported: write the value out in full",
                "", self._line())
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", "", self._line())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _line(self) -> int | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        return None if mark is None else mark.line + 1


def _yaml_error(exc: yaml.YAMLError | RecursionError, text: str) -> ConfigError:
    """One line, with the line number, for whatever PyYAML raised."""
    if isinstance(exc, RecursionError):
        return ConfigError(f"nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        return ConfigError(f"not valid YAML: {exc.reason}: {shown}", "",
                           text[: exc.position].count("\n") + 1)
    mark = getattr(exc, "problem_mark", None)
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    message = ", ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
    return ConfigError(f"not valid YAML: {message}", "",
                       mark.line + 1 if mark is not None else None)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{name} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte {exc.start}",
            "", line) from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _load_manifest(path: Path, line: int | None) -> dict[str, dict[str, str]]:
    try:
        data = yaml.load(_decode(path.read_bytes(), str(path)), Loader=_Loader)
    except ConfigError as exc:
        raise ConfigError(f"bad prompt manifest {path}: {exc}", "prompts.dir", line) from None
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"cannot read prompt manifest {path}: {exc}", "prompts.dir",
                          line) from None
    out: dict[str, dict[str, str]] = {}
    if not isinstance(data, dict):
        raise ConfigError(f"prompt manifest {path} must map languages to prompts", "prompts.dir",
                          line)
    for lang, prompts in data.items():
        if not isinstance(prompts, dict):
            continue
        out[str(lang)] = {
            str(pid): str(p["file"]) if isinstance(p, dict) and "file" in p else f"{lang}/{pid}"
            for pid, p in prompts.items()
        }
    return out


def _prompt_file_exists(base: Path, rel: str) -> bool:
    return any(_is_file(base / f"{rel}{ext}") for ext in (".wav", ".gsm", ".ulaw", ".sln"))


# --------------------------------------------------------------------------- loading


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file. Raises ``ConfigError``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL in the path
        raise ConfigError(f"cannot read {path!r}: {exc}") from None
    text = _decode(data, str(path))
    return loads(text, base_dir=path.parent, env=os.environ if env is None else env)


def loads(text: str, base_dir: Path = Path("."), env: Mapping[str, str] | None = None) -> Config:
    env = env if env is not None else {}
    try:
        node = yaml.compose(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _yaml_error(exc, text) from None
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("the file must be a YAML mapping (ari:, queues:, agents: ...)")
    lines: dict[str, int] = {}
    root = _Doc(node, "", lines)
    region = _region(root, None)

    # ---- ari
    a = root.sub("ari")
    assert a is not None
    url, user, password = a.scalar("url", "http://127.0.0.1:8088"), a.scalar("user", "ivr"), \
        a.scalar("password", "")
    ari = AriConfig(
        url=env.get("IVR_ARI_URL") or url,
        user=env.get("IVR_ARI_USER") or user,
        password=env.get("IVR_ARI_PASSWORD") or password,
        app=a.scalar("app", "ivr"),
    )
    if not ari.password:
        raise a.err("password", "is required (or set IVR_ARI_PASSWORD)")
    if not re.match(r"^https?://", ari.url):
        raise a.err("url", "must start with http:// or https://")
    try:
        parsed = urlsplit(ari.url)
        if not parsed.hostname:
            raise ValueError("no host")
        parsed.port  # noqa: B018 - raises ValueError when out of range
    except ValueError as exc:
        raise a.err("url", f"not a valid URL {ari.url!r}: {exc}") from None
    if not _NAME.match(ari.app):
        raise a.err("app", "must be a short name of letters, digits, _ . -")
    a.check_unknown()

    # ---- http
    h = root.sub("http", required=False)
    if h is not None:
        bind = h.scalar("bind", "127.0.0.1")
        port = _int(h, "port", 8080, 1, 65535)
        token = h.scalar("api_token", "")
        token = env.get("IVR_API_TOKEN") or token
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise h.err("bind", f"must be an IP address, not {bind!r}") from None
        h.check_unknown()
    else:
        bind, port, token = "127.0.0.1", 8080, env.get("IVR_API_TOKEN", "")
    http = HttpConfig(bind=bind, port=port, api_token=token)

    # ---- store
    s = root.sub("store", required=False)
    store_path = Path("ivr.sqlite3")
    if s is not None:
        store_path = Path(s.scalar("path", "ivr.sqlite3"))
        s.check_unknown()
    if not store_path.is_absolute():
        store_path = base_dir / store_path

    # ---- prompts
    p = root.sub("prompts", required=False)
    pdir, adir, lang = "prompts", "", "en"
    if p is not None:
        pdir = p.scalar("dir", "prompts")
        adir = p.scalar("asterisk_dir", "")
        lang = p.scalar("language", "en")
        p.check_unknown()
    prompt_dir = Path(pdir) if Path(pdir).is_absolute() else base_dir / pdir
    dir_line = lines.get("prompts.dir", lines.get("prompts"))
    manifest = prompt_dir / "manifest.yaml"
    if not _is_file(manifest):
        raise ConfigError(f"no prompt manifest at {manifest}", "prompts.dir", dir_line)
    files = _load_manifest(manifest, dir_line)

    # ---- outbound
    o = root.sub("outbound")
    assert o is not None
    outbound = OutboundConfig(dial=_dial(o),
                              dial_timeout=_duration(o, "dial_timeout", "30s", 1, 300))
    o.check_unknown()

    # ---- queues
    qd = root.sub("queues")
    assert qd is not None
    queues: dict[str, QueueConfig] = {}
    dids: dict[str, str] = {}
    languages = {lang}
    for name, q in qd.children():
        if not _NAME.match(name):
            raise qd.err(name, "queue names are letters, digits, _ . - (max 64)")
        did = q.scalar("did")
        if did in dids:
            raise q.err("did", f"already used by queue {dids[did]}")
        dids[did] = name
        max_waiting = _int(q, "max_waiting", None, 1, 100) if q.has("max_waiting") else None
        q.used.add("max_waiting")
        max_ewt = _opt_duration(q, "max_ewt", 30, 3600)
        qregion = _region(q, region)
        callback_regions = _regions(q, "callback_regions", (qregion,))
        number_types = _number_types(q)
        allowed = _patterns(q, "allowed_numbers")
        denied = _patterns(q, "denied_numbers")
        hours_doc = q.sub("hours", required=False)
        overrides: dict[str, str] = {}
        pr = q.sub("prompts", required=False)
        if pr is not None:
            for pid in list(pr.items):
                if pid not in PROMPT_IDS:
                    raise pr.err(pid, f"unknown prompt id (known: {', '.join(PROMPT_IDS)})")
                rel = pr.scalar(pid)
                if not _prompt_file_exists(prompt_dir, rel):
                    raise pr.err(pid, f"prompt file {prompt_dir / rel}.wav does not exist")
                overrides[pid] = rel
        qlang = q.scalar("language", lang)
        languages.add(qlang)
        queues[name] = QueueConfig(
            name=name,
            did=did,
            caller_id=q.scalar("caller_id", did),
            moh_class=q.scalar("moh_class", "default"),
            language=qlang,
            max_waiting=max_waiting,
            max_ewt=max_ewt,
            region=qregion,
            callback_regions=callback_regions,
            number_types=number_types,
            first_offer_after=_duration(q, "first_offer_after", "30s", 0.1, 3600),
            repeat_offer_every=_duration(q, "repeat_offer_every", "120s", 0.1, 3600),
            allowed_numbers=allowed,
            denied_numbers=denied,
            alternate_number=_bool(q, "alternate_number", False),
            retry_interval=_duration(q, "retry_interval", "10m", 0.1, 86400),
            max_attempts=_int(q, "max_attempts", 3, 1, 20),
            expire_after=_duration(q, "expire_after", "7d", 1, 90 * 86400),
            ring_timeout=_duration(q, "ring_timeout", "20s", 1, 300),
            preview_timeout=_duration(q, "preview_timeout", "20s", 1, 300),
            verify_customer=_bool(q, "verify_customer", False),
            wrap_up=_duration(q, "wrap_up", "10s", 0, 3600),
            hours=_hours(hours_doc) if hours_doc is not None else None,
            stop_offers_before_close=_duration(q, "stop_offers_before_close", "0s", 0, 86400),
            prompts=overrides,
        )
        if max_waiting is None and max_ewt is None:
            raise q.err("max_waiting", "set max_waiting, max_ewt or both (the overflow condition)")
        q.check_unknown()
        try:
            queues[name].number_guard()
        except ValueError as exc:  # every part was checked above; this is the backstop
            raise qd.err(name, f"bad number policy: {exc}") from None
    if not queues:
        raise root.err("queues", "define at least one queue")

    for language in sorted(languages):
        have = files.get(language)
        if have is None:
            raise ConfigError(f"no prompts for language {language!r} in {manifest}",
                              "prompts.language", lines.get("prompts.language", dir_line))
        for pid in PROMPT_IDS:
            if pid not in have:
                raise ConfigError(f"prompt {pid!r} missing for {language!r} in {manifest}",
                                  "prompts.dir", dir_line)
            if not _prompt_file_exists(prompt_dir, have[pid]):
                raise ConfigError(f"prompt file {prompt_dir / have[pid]}.wav does not exist",
                                  "prompts.dir", dir_line)
    prompts = PromptConfig(
        dir=prompt_dir, asterisk_dir=adir or str(prompt_dir.resolve()), language=lang, files=files
    )

    # ---- agents
    ad = root.sub("agents")
    assert ad is not None
    agents: dict[str, AgentConfig] = {}
    endpoints: dict[str, str] = {}
    for aid, ag in ad.children():
        if not _NAME.match(aid):
            raise ad.err(aid, "agent ids are letters, digits, _ . - (max 64)")
        endpoint = ag.scalar("endpoint")
        if not re.match(r"^[A-Za-z]+/[^/\s]+$", endpoint):
            raise ag.err("endpoint", "must look like PJSIP/alice")
        if endpoint in endpoints:
            raise ag.err("endpoint", f"already used by agent {endpoints[endpoint]}")
        endpoints[endpoint] = aid
        served = ag.strings("queues", ())
        if not served:
            raise ag.err("queues", "list the queues this agent serves")
        for qn in served:
            if qn not in queues:
                raise ag.err("queues", f"unknown queue {qn!r}")
        agents[aid] = AgentConfig(aid, ag.scalar("name", aid), endpoint, served)
        ag.check_unknown()

    log_level = root.scalar("log_level", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise root.err("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    root.check_unknown()
    return Config(
        ari=ari,
        http=http,
        store_path=store_path,
        prompts=prompts,
        outbound=outbound,
        queues=queues,
        agents=agents,
        log_level=log_level,
        lines=lines,
    )


def as_dict(cfg: Config) -> dict[str, Any]:
    """A redacted summary for ``ivr check-config`` output."""
    return {
        "ari": {"url": cfg.ari.url, "user": cfg.ari.user, "app": cfg.ari.app},
        "http": {"bind": cfg.http.bind, "port": cfg.http.port},
        "store": str(cfg.store_path),
        "queues": {n: q.did for n, q in cfg.queues.items()},
        "agents": {n: a.endpoint for n, a in cfg.agents.items()},
    }
