"""One YAML file -> frozen, typed configuration.

Every error names the key (dotted path) and the line, and nothing starts (SPEC R22).
Unknown keys are errors too: a misspelt ``max_ewt`` silently ignored would mean a queue
that never offers callbacks. Secrets may come from the environment so the file itself
can be shared: ``IVR_ARI_URL``, ``IVR_ARI_USER``, ``IVR_ARI_PASSWORD``, ``IVR_API_TOKEN``,
and ``IVR_PASSWORD_<LOGIN>`` (an agent's or supervisor's console password, plain: it is
hashed here and never kept; LOGIN is the id upper-cased, other characters as ``_``).

Console logins (``ivr.web.auth``): an agent with a ``password_hash`` (``ivr
hash-password``) can log in to the agent console as its id; ``supervisors:`` lists the
supervisor logins. The integration token (``http.api_token``) is limited to
``http.api_scopes``.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ivr import passwords
from ivr.configdoc import (
    ConfigError,
    Doc,
    SafeLoader,
    boolean,
    decode,
    duration,
    integer,
    opt_duration,
    parse_duration,
    yaml_error,
)
from ivr.domain import hours as hours_mod
from ivr.domain import numbers
from ivr.domain.hours import BusinessHours
from ivr.domain.numbers import NumberGuard, PhoneNumber
from ivr.domain.policy import PolicyError, QueuePolicy
from ivr.prompts import PROMPT_IDS, PromptConfig, check_languages, file_exists, load_manifest

__all__ = ["Config", "ConfigError", "QueueConfig", "load", "loads", "parse_duration"]

# Fields ``outbound.dial`` may use (see the module docstring).
DIAL_FIELDS: tuple[str, ...] = ("number", "e164", "national")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# --------------------------------------------------------------------------- typed config


@dataclass(frozen=True)
class AriConfig:
    url: str
    user: str
    password: str
    app: str
    #: seconds a REST request may go unanswered (from the moment it is sent)
    request_timeout: float = 10.0
    #: seconds a channel command (answer, music, playback, hang-up) that timed out is
    #: checked and sent again before it counts as failed (``ivr.ari.AriClient.patience``)
    give_up_after: float = 60.0


#: the field a node's ``trunk`` template must contain: the agent's endpoint name there
TRUNK_FIELD = "agent"


@dataclass(frozen=True)
class NodeConfig:
    """One Asterisk node: its ARI, and how the other nodes reach an agent on it."""

    name: str
    ari: AriConfig
    trunk: str = ""
    """Dial string template, from another node, for an agent whose softphone is on
    this one: ``{agent}`` is the agent's endpoint name (``PJSIP/{agent}@node-b``)."""

    def trunk_dial(self, endpoint: str) -> str:
        """How another node dials ``endpoint`` (``PJSIP/alice``) of this node."""
        return self.trunk.format(agent=endpoint.partition("/")[2])


#: what the integration token may do (``http.api_scopes``): read queues, agents,
#: callbacks and metrics; create and cancel callbacks; set agents ready / not ready
API_SCOPES: tuple[str, ...] = ("read", "callbacks", "agents")


@dataclass(frozen=True)
class HttpConfig:
    bind: str
    port: int
    api_token: str
    api_scopes: tuple[str, ...] = API_SCOPES


@dataclass(frozen=True)
class SupervisorConfig:
    id: str
    name: str
    password_hash: str


@dataclass(frozen=True)
class QueueConfig:
    name: str
    did: str
    caller_id: str
    moh_class: str
    language: str
    policy: QueuePolicy
    """The engine's rules for this queue (overflow, retries, expiry), built here."""
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
    ring_timeout: float
    preview_timeout: float
    verify_customer: bool
    wrap_up: float
    hours: BusinessHours | None
    stop_offers_before_close: float
    prompts: Mapping[str, str] = field(default_factory=dict)
    announce_on_arrival: bool = False
    """Tell a new caller their position and the expected wait before the music."""
    announce_with_offer: bool = False
    """Say the position and the expected wait again before each callback offer."""
    min_position_for_offer: int = 1
    """No callback offer to a caller nearer the head than this (1: anyone in overflow)."""
    languages: tuple[str, ...] = ()
    """Languages a caller may choose at entry, key 1, 2, ... in this order (the
    ``language_menu`` prompt names them); empty: the queue's ``language`` only."""
    language_timeout: float = 5.0
    """How long the language menu waits for a key (then the first language)."""
    answering_machine: str = "off"
    """Answering-machine detection on callbacks (``AMD()`` once the customer answers):
    ``off``; ``retry`` (a machine is a failed attempt, reason ``machine``); ``message``
    (a machine hears ``callback_machine_message`` and the callback closes)."""
    amd_options: str = ""
    """``AMD()``'s arguments (up to 9 comma-separated whole numbers, ms / counts, in
    its order); empty: amd.conf's settings."""

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
    password_hash: str = ""
    """Console login (``ivr.passwords``); empty: this agent uses the softphone only."""
    node: str = ""
    """The Asterisk node the agent's softphone is registered on."""


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


#: the name of the one node of a config with ``ari:`` instead of ``asterisk:``
DEFAULT_NODE = "asterisk"


@dataclass(frozen=True)
class Config:
    ari: AriConfig
    """The first node's ARI (the Stasis app name is the same on every node)."""
    http: HttpConfig
    store_path: Path
    prompts: PromptConfig
    outbound: OutboundConfig
    queues: Mapping[str, QueueConfig]
    agents: Mapping[str, AgentConfig]
    log_level: str
    supervisors: Mapping[str, SupervisorConfig] = field(default_factory=dict)
    log_format: str = "text"
    """``text`` (one line per record) or ``json`` (one JSON object per record)."""
    lines: Mapping[str, int] = field(default_factory=dict)
    """Dotted key -> line in the file, for every key written there (error messages
    about values checked after loading, e.g. ``store.path``)."""
    nodes: Mapping[str, NodeConfig] = field(default_factory=dict)
    """The Asterisk nodes by name, in the file's order (one, ``asterisk``, for ``ari:``)."""
    store_url: str = ""
    """``postgresql://...`` when the store is PostgreSQL; empty: SQLite at store_path."""
    node_down_after: float = 60.0
    """A node unreachable this long: its live callers are counted lost (their calls
    died with it); its callbacks stay in the queue for the other nodes."""

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``; the first node for "" (items stored before there
        were several nodes) and for a name no longer configured."""
        return self.nodes.get(name) or next(iter(self.nodes.values()))

    def line_of(self, key: str) -> int | None:
        """The line of ``key``, else of its nearest written parent."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return None


# --------------------------------------------------------------------------- values


def _hours(doc: Doc) -> BusinessHours:
    tz = doc.scalar("timezone", "UTC")
    try:
        hours_mod.check_timezone(tz)
    except ValueError as exc:
        raise doc.err("timezone", str(exc)) from None
    days: dict[int, list[tuple[time, time]]] = {}
    for name in list(doc.items):
        if name == "timezone":
            continue
        try:
            which = hours_mod.parse_days(name)
            ranges = [hours_mod.parse_range(r) for r in doc.strings(name, ())]
        except ValueError as exc:
            raise doc.err(name, str(exc)) from None
        for d in which:
            days.setdefault(d, []).extend(ranges)
    doc.check_unknown()
    merged = {d: hours_mod.merge(r) for d, r in days.items() if r}
    if not merged:
        raise ConfigError("no opening hours: list days, e.g. mon-fri: [\"08:00-18:00\"]",
                          doc.path, doc.lines.get(doc.path, doc.line))
    return BusinessHours(tz, merged)


def _patterns(doc: Doc, name: str) -> tuple[str, ...]:
    patterns = doc.strings(name, ())
    for p in patterns:
        try:
            numbers.compile_pattern(p)
        except ValueError as exc:
            raise doc.err(name, f"{exc} (use _NXX. style, re:<regex> or a number)") from None
    return patterns


def _regions(doc: Doc, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(r.strip().upper() for r in doc.strings(name, default))
    if not values:
        raise doc.err(name, "list at least one region, e.g. [US]")
    for r in values:
        if not numbers.known_region(r):
            raise doc.err(name, f"unknown region {r!r}: use ISO 3166 codes, e.g. US, GB, DE")
    return values


def _number_types(doc: Doc) -> tuple[str, ...]:
    values = tuple(t.strip().lower() for t in doc.strings("number_types", numbers.DEFAULT_TYPES))
    if not values:
        raise doc.err("number_types", "list at least one number type, e.g. [fixed_line, mobile]")
    for t in values:
        if t not in numbers.NUMBER_TYPES:
            raise doc.err("number_types",
                          f"unknown number type {t!r} (known: {', '.join(numbers.NUMBER_TYPES)})")
    return values


def _region(doc: Doc, default: str | None) -> str:
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


def _dial(doc: Doc) -> str:
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


# --------------------------------------------------------------------------- sections


def _ari(a: Doc, env: Mapping[str, str], suffix: str = "") -> AriConfig:
    """``ari:`` (one node; environment ``IVR_ARI_URL`` ...) or one node of
    ``asterisk:`` (``IVR_ARI_URL_<NODE>`` ...)."""
    # Read every key first (an unread key is "unknown"), then let the environment win.
    url, user, password = (a.scalar("url", "http://127.0.0.1:8088"), a.scalar("user", "ivr"),
                           a.scalar("password", ""))
    ari = AriConfig(
        url=env.get("IVR_ARI_URL" + suffix) or url,
        user=env.get("IVR_ARI_USER" + suffix) or user,
        password=env.get("IVR_ARI_PASSWORD" + suffix) or password,
        app=a.scalar("app", "ivr"),
        request_timeout=duration(a, "request_timeout", "10s", 1, 300),
        give_up_after=duration(a, "give_up_after", "60s", 0, 3600),
    )
    if not ari.password:
        raise a.err("password", f"is required (or set IVR_ARI_PASSWORD{suffix})")
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
    return ari


def _nodes(root: Doc, env: Mapping[str, str]) -> dict[str, NodeConfig]:
    """``ari:`` for one Asterisk, or ``asterisk:`` naming several nodes (one queue
    across them); not both."""
    if root.has("ari") and root.has("asterisk"):
        raise root.err("asterisk", "use ari: (one Asterisk) or asterisk: (several nodes), "
                                   "not both")
    if not root.has("asterisk"):
        a = root.sub("ari")
        ari = _ari(a, env)
        a.check_unknown()
        return {DEFAULT_NODE: NodeConfig(DEFAULT_NODE, ari)}
    nd = root.sub("asterisk")
    nodes: dict[str, NodeConfig] = {}
    for name, n in nd.children():
        if not re.match(r"^[a-z0-9][a-z0-9_-]{0,31}$", name):
            raise nd.err(name, "node names are lower-case letters, digits, _ - (max 32)")
        ari = _ari(n, env, "_" + re.sub(r"[^A-Z0-9]", "_", name.upper()))
        trunk = n.scalar("trunk", "")
        nodes[name] = NodeConfig(name, ari, _trunk(n, trunk) if trunk else "")
        n.check_unknown()
    if not nodes:
        raise root.err("asterisk", "name at least one node")
    first = next(iter(nodes.values()))
    for name, node in nodes.items():
        if node.ari.app != first.ari.app:
            raise nd.sub(name).err("app", f"every node uses one Stasis app name "
                                          f"({first.ari.app!r})")
        if len(nodes) > 1 and not node.trunk:
            raise nd.sub(name).err(
                "trunk", "is required with several nodes: how the other nodes dial an agent "
                         "on this one, e.g. PJSIP/{agent}@node-" + name)
    return nodes


def _trunk(doc: Doc, trunk: str) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(trunk) if f is not None]
    except ValueError as exc:
        raise doc.err("trunk", f"not a valid template {trunk!r}: {exc}") from None
    if fields != [TRUNK_FIELD]:
        raise doc.err("trunk", f"must contain {{{TRUNK_FIELD}}} once (the agent's endpoint "
                               f"name on that node), e.g. PJSIP/{{{TRUNK_FIELD}}}@node-b")
    if not re.match(r"^[A-Za-z][A-Za-z0-9]*/\S+$", trunk):
        raise doc.err("trunk", "must start with a channel technology and '/', e.g. "
                               "PJSIP/{agent}@node-b")
    return trunk


def _http(root: Doc, env: Mapping[str, str]) -> HttpConfig:
    h = root.sub("http", required=False)
    if h is None:
        return HttpConfig(bind="127.0.0.1", port=8080, api_token=env.get("IVR_API_TOKEN", ""))
    bind = h.scalar("bind", "127.0.0.1")
    port = integer(h, "port", 8080, 1, 65535)
    token = h.scalar("api_token", "")
    token = env.get("IVR_API_TOKEN") or token
    scopes = h.strings("api_scopes", API_SCOPES)
    for scope in scopes:
        if scope not in API_SCOPES:
            raise h.err("api_scopes", f"unknown scope {scope!r} (one of {', '.join(API_SCOPES)})")
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise h.err("bind", f"must be an IP address, not {bind!r}") from None
    h.check_unknown()
    return HttpConfig(bind=bind, port=port, api_token=token, api_scopes=tuple(scopes))


def _store(root: Doc, base_dir: Path, env: Mapping[str, str]) -> tuple[Path, str]:
    """SQLite at ``store.path`` (the default: nothing to run), or PostgreSQL at
    ``store.url`` / ``IVR_STORE_URL`` (several instances: an active and standbys)."""
    s = root.sub("store", required=False)
    path = Path("ivr.sqlite3")
    url = ""
    if s is not None:
        if s.has("path") and s.has("url"):
            raise s.err("url", "set path (SQLite) or url (PostgreSQL), not both")
        path = Path(s.scalar("path", "ivr.sqlite3"))
        url = s.scalar("url", "")
        s.check_unknown()
    url = env.get("IVR_STORE_URL") or url
    if url:
        try:
            parsed = urlsplit(url)
            parsed.port  # noqa: B018 - raises ValueError when out of range
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme not in ("postgresql", "postgres"):
            # Never echo the URL: it may carry the database password.
            raise ConfigError("must be a postgresql://user:password@host/database URL "
                              "(or leave it out for SQLite)", "store.url",
                              root.lines.get("store.url"))
    return (path if path.is_absolute() else base_dir / path), url


def _prompts(root: Doc, base_dir: Path) -> PromptConfig:
    p = root.sub("prompts", required=False)
    pdir, adir, lang = "prompts", "", "en"
    if p is not None:
        pdir = p.scalar("dir", "prompts")
        adir = p.scalar("asterisk_dir", "")
        lang = p.scalar("language", "en")
        p.check_unknown()
    prompt_dir = Path(pdir) if Path(pdir).is_absolute() else base_dir / pdir
    line = root.lines.get("prompts.dir", root.lines.get("prompts"))
    files = load_manifest(prompt_dir / "manifest.yaml", line)
    return PromptConfig(dir=prompt_dir, asterisk_dir=adir or str(prompt_dir.resolve()),
                        language=lang, files=files)


def _outbound(root: Doc) -> OutboundConfig:
    o = root.sub("outbound")
    outbound = OutboundConfig(dial=_dial(o),
                              dial_timeout=duration(o, "dial_timeout", "30s", 1, 300))
    o.check_unknown()
    return outbound


def _policy(q: Doc, name: str) -> QueuePolicy:
    """The engine's rules; their ranges live in ``QueuePolicy`` (one home)."""
    max_waiting = integer(q, "max_waiting", None) if q.has("max_waiting") else None
    q.used.add("max_waiting")
    max_ewt = opt_duration(q, "max_ewt")
    if max_waiting is None and max_ewt is None:
        raise q.err("max_waiting", "set max_waiting, max_ewt or both (the overflow condition)")
    try:
        return QueuePolicy(
            name=name,
            max_waiting=max_waiting,
            max_ewt=max_ewt,
            retry_interval=duration(q, "retry_interval", "10m"),
            max_attempts=integer(q, "max_attempts", 3),
            expire_after=duration(q, "expire_after", "7d"),
        )
    except PolicyError as exc:
        raise q.err(exc.field, exc.reason) from None


def _queue_prompts(q: Doc, prompts: PromptConfig) -> dict[str, str]:
    overrides: dict[str, str] = {}
    pr = q.sub("prompts", required=False)
    if pr is not None:
        for pid in list(pr.items):
            if pid not in PROMPT_IDS:
                raise pr.err(pid, f"unknown prompt id (known: {', '.join(PROMPT_IDS)})")
            rel = pr.scalar(pid)
            if not file_exists(prompts.dir, rel):
                raise pr.err(pid, f"prompt file {prompts.dir / rel}.wav does not exist")
            overrides[pid] = rel
    return overrides


#: ``answering_machine`` values (``QueueConfig.answering_machine``)
ANSWERING_MACHINE_MODES: tuple[str, ...] = ("off", "retry", "message")
#: ``AMD()``'s arguments, in its order (``amd_options``)
AMD_ARGS: tuple[str, ...] = (
    "initial_silence", "greeting", "after_greeting_silence", "total_analysis_time",
    "min_word_length", "between_words_silence", "maximum_number_of_words",
    "silence_threshold", "maximum_word_length",
)


def _answering_machine(q: Doc) -> str:
    mode = q.scalar("answering_machine", "off").strip().lower()
    if mode not in ANSWERING_MACHINE_MODES:
        raise q.err("answering_machine",
                    f"must be {', '.join(ANSWERING_MACHINE_MODES[:-1])} or "
                    f"{ANSWERING_MACHINE_MODES[-1]}, not {mode!r}")
    return mode


def _amd_options(q: Doc) -> str:
    """``amd_options: "2500,1500,800,5000"``: AMD()'s arguments as the dialplan takes
    them; whole numbers only (the text reaches the dialplan as a channel variable)."""
    text = q.scalar("amd_options", "").strip()
    if not text:
        return ""
    fields = [f.strip() for f in text.split(",")]
    if len(fields) > len(AMD_ARGS):
        raise q.err("amd_options", f"at most {len(AMD_ARGS)} values "
                                   f"({', '.join(AMD_ARGS)})")
    for name, value in zip(AMD_ARGS, fields, strict=False):
        if value and not (value.isascii() and value.isdigit() and int(value) <= 60_000):
            raise q.err("amd_options", f"{name} must be a whole number 0..60000 "
                                       f"(or empty for amd.conf's), not {value!r}")
    return ",".join(fields)


def _queue(name: str, q: Doc, region: str, prompts: PromptConfig) -> QueueConfig:
    did = q.scalar("did")
    hours_doc = q.sub("hours", required=False)
    qregion = _region(q, region)
    queue = QueueConfig(
        name=name,
        did=did,
        caller_id=q.scalar("caller_id", did),
        moh_class=q.scalar("moh_class", "default"),
        language=q.scalar("language", prompts.language),
        policy=_policy(q, name),
        region=qregion,
        callback_regions=_regions(q, "callback_regions", (qregion,)),
        number_types=_number_types(q),
        first_offer_after=duration(q, "first_offer_after", "30s", 0.1, 3600),
        repeat_offer_every=duration(q, "repeat_offer_every", "120s", 0.1, 3600),
        allowed_numbers=_patterns(q, "allowed_numbers"),
        denied_numbers=_patterns(q, "denied_numbers"),
        alternate_number=boolean(q, "alternate_number", False),
        ring_timeout=duration(q, "ring_timeout", "20s", 1, 300),
        preview_timeout=duration(q, "preview_timeout", "20s", 1, 300),
        verify_customer=boolean(q, "verify_customer", False),
        wrap_up=duration(q, "wrap_up", "10s", 0, 3600),
        hours=_hours(hours_doc) if hours_doc is not None else None,
        stop_offers_before_close=duration(q, "stop_offers_before_close", "0s", 0, 86400),
        prompts=_queue_prompts(q, prompts),
        announce_on_arrival=boolean(q, "announce_on_arrival", False),
        announce_with_offer=boolean(q, "announce_with_offer", False),
        min_position_for_offer=integer(q, "min_position_for_offer", 1, 1, 10_000),
        languages=_languages(q),
        language_timeout=duration(q, "language_timeout", "5s", 1, 60),
        answering_machine=_answering_machine(q),
        amd_options=_amd_options(q),
    )
    q.check_unknown()
    try:
        queue.number_guard()
    except ValueError as exc:  # every part was checked above; this is the backstop
        raise ConfigError(f"bad number policy: {exc}", q.path, q.line) from None
    return queue


def _languages(q: Doc) -> tuple[str, ...]:
    """``languages: [en, es]``: at most 9 (one key each), no repeats."""
    langs = q.strings("languages", ())
    if len(langs) == 1:
        raise q.err("languages", "list two or more (one language: use language:)")
    if len(langs) > 9 or len(set(langs)) != len(langs):
        raise q.err("languages", "at most 9 languages, each once (keys 1..9)")
    for lang in langs:
        if not _NAME.match(lang):
            raise q.err("languages", f"not a language code: {lang!r}")
    return langs


def _queues(root: Doc, region: str, prompts: PromptConfig) -> dict[str, QueueConfig]:
    qd = root.sub("queues")
    queues: dict[str, QueueConfig] = {}
    dids: dict[str, str] = {}
    for name, q in qd.children():
        if not _NAME.match(name):
            raise qd.err(name, "queue names are letters, digits, _ . - (max 64)")
        queue = _queue(name, q, region, prompts)
        if queue.did in dids:
            raise q.err("did", f"already used by queue {dids[queue.did]}")
        dids[queue.did] = name
        queues[name] = queue
    if not queues:
        raise root.err("queues", "define at least one queue")
    return queues


def _agents(root: Doc, queues: Mapping[str, QueueConfig], env: Mapping[str, str],
            nodes: Mapping[str, NodeConfig]) -> dict[str, AgentConfig]:
    ad = root.sub("agents")
    agents: dict[str, AgentConfig] = {}
    endpoints: dict[tuple[str, str], str] = {}
    for aid, ag in ad.children():
        if not _NAME.match(aid):
            raise ad.err(aid, "agent ids are letters, digits, _ . - (max 64)")
        endpoint = ag.scalar("endpoint")
        if not re.match(r"^[A-Za-z]+/[^/\s]+$", endpoint):
            raise ag.err("endpoint", "must look like PJSIP/alice")
        node = ag.scalar("node", next(iter(nodes)))
        if node not in nodes:
            raise ag.err("node", f"unknown Asterisk node {node!r} (asterisk: names "
                                 f"{', '.join(nodes)})")
        # Endpoint names are per node: PJSIP/alice on two nodes are two phones.
        if (node, endpoint) in endpoints:
            raise ag.err("endpoint", f"already used by agent {endpoints[node, endpoint]}")
        endpoints[node, endpoint] = aid
        served = ag.strings("queues", ())
        if not served:
            raise ag.err("queues", "list the queues this agent serves")
        for qn in served:
            if qn not in queues:
                raise ag.err("queues", f"unknown queue {qn!r}")
        password = _password(ag, aid, env)
        agents[aid] = AgentConfig(aid, ag.scalar("name", aid), endpoint, served, password,
                                  node)
        ag.check_unknown()
    return agents


def password_env(login: str) -> str:
    """The environment variable that may carry ``login``'s console password."""
    return "IVR_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", login.upper())


def _password(d: Doc, login: str, env: Mapping[str, str]) -> str:
    hashed = d.scalar("password_hash", "")
    plain = env.get(password_env(login), "")
    if plain:
        return passwords.hash_password(plain)
    if hashed:
        try:
            passwords.parse(hashed)
        except passwords.BadHash as exc:
            raise d.err("password_hash", str(exc)) from None
    return hashed


def _supervisors(root: Doc, agents: Mapping[str, AgentConfig],
                 env: Mapping[str, str]) -> dict[str, SupervisorConfig]:
    sd = root.sub("supervisors", required=False)
    if sd is None:
        return {}
    out: dict[str, SupervisorConfig] = {}
    for sid, sv in sd.children():
        if not _NAME.match(sid):
            raise sd.err(sid, "supervisor ids are letters, digits, _ . - (max 64)")
        if sid in agents:
            raise sd.err(sid, "is also an agent id: one login, one role")
        password = _password(sv, sid, env)
        if not password:
            raise sv.err("password_hash", f"is required (or set {password_env(sid)})")
        out[sid] = SupervisorConfig(sid, sv.scalar("name", sid), password)
        sv.check_unknown()
    return out


def _log_level(root: Doc) -> str:
    level = root.scalar("log_level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise root.err("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    return level


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
    text = decode(data, str(path))
    return loads(text, base_dir=path.parent, env=os.environ if env is None else env)


def loads(text: str, base_dir: Path = Path("."), env: Mapping[str, str] | None = None) -> Config:
    env = env if env is not None else {}
    try:
        node = yaml.compose(text, Loader=SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise yaml_error(exc, text) from None
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("the file must be a YAML mapping (ari:, queues:, agents: ...)")
    lines: dict[str, int] = {}
    root = Doc(node, "", lines)
    region = _region(root, None)
    nodes = _nodes(root, env)
    ari = next(iter(nodes.values())).ari
    http = _http(root, env)
    store_path, store_url = _store(root, base_dir, env)
    node_down_after = duration(root, "node_down_after", "60s", 1, 3600)
    prompts = _prompts(root, base_dir)
    outbound = _outbound(root)
    queues = _queues(root, region, prompts)
    in_use = {prompts.language}
    for q in queues.values():
        in_use.update((q.language, *q.languages))
    check_languages(prompts, in_use, lines)
    agents = _agents(root, queues, env, nodes)
    supervisors = _supervisors(root, agents, env)
    log_level = _log_level(root)
    log_format = root.scalar("log_format", "text")
    if log_format not in ("text", "json"):
        raise root.err("log_format", "must be text or json")
    root.check_unknown()
    return Config(ari=ari, http=http, store_path=store_path, prompts=prompts,
                  outbound=outbound, queues=queues, agents=agents, log_level=log_level,
                  supervisors=supervisors, log_format=log_format, lines=lines, nodes=nodes,
                  store_url=store_url, node_down_after=node_down_after)


def _store_shown(cfg: Config) -> str:
    if not cfg.store_url:
        return str(cfg.store_path)
    from ivr.pgstore import redact_url  # late: only a PostgreSQL store needs asyncpg

    return redact_url(cfg.store_url)


def as_dict(cfg: Config) -> dict[str, Any]:
    """A redacted summary for ``ivr check-config`` output."""
    return {
        "ari": {"url": cfg.ari.url, "user": cfg.ari.user, "app": cfg.ari.app},
        "nodes": {n.name: n.ari.url for n in cfg.nodes.values()},
        "http": {"bind": cfg.http.bind, "port": cfg.http.port},
        "store": _store_shown(cfg),
        "queues": {n: q.did for n, q in cfg.queues.items()},
        "agents": {n: a.endpoint for n, a in cfg.agents.items()},
        "console_logins": sorted(
            [a.id for a in cfg.agents.values() if a.password_hash] + list(cfg.supervisors)),
    }
