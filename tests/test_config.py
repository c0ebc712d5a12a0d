"""Config: a good file loads; every bad one is refused with the key and line named."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.config import ConfigError, load, loads, parse_duration
from ivr.domain.hours import BusinessHours
from ivr.domain.numbers import DEFAULT_TYPES, NUMBER_TYPES, parse

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text()


def test_example_loads() -> None:
    cfg = load(REPO / "config.example.yaml", env={})
    q = cfg.queues["support"]
    assert q.first_offer_after == 30 and q.repeat_offer_every == 120
    assert q.policy.max_waiting == 5 and q.policy.max_ewt == 300
    assert q.hours is not None and q.hours.days[0]
    assert cfg.agents["alice"].queues == ("support",)
    assert cfg.prompts.uri("offer").endswith("/en/offer")


def test_env_overrides_secret() -> None:
    cfg = loads(EXAMPLE, base_dir=REPO, env={"IVR_ARI_PASSWORD": "from-env"})
    assert cfg.ari.password == "from-env"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("max_ewt: 5m ", "max_ewt: 5x ", "queues.support.max_ewt"),
        ("max_waiting: 5 ", "max_waiting: 500 ", "queues.support.max_waiting"),
        ("max_ewt: 5m ", "max_ewt: 10s ", "queues.support.max_ewt"),
        ("first_offer_after: 30s", "first_ofer_after: 30s", "queues.support.first_ofer_after"),
        ("queues: [support]", "queues: [sales]", "agents.alice.queues"),
        ("endpoint: PJSIP/agent2", "endpoint: PJSIP/agent1", "agents.bob.endpoint"),
        ("dial: PJSIP/{number}@carrier", "dial: PJSIP/carrier", "outbound.dial"),
        ("bind: 127.0.0.1 ", "bind: localhost ", "http.bind"),
        ("mon-fri: [\"08:00-18:00\"]", "mon-fri: [\"18:00-08:00\"]",
         "queues.support.hours.mon-fri"),
        ("timezone: America/New_York", "timezone: Mars/Olympus", "queues.support.hours.timezone"),
        ("verify_customer: false", "verify_customer: maybe", "queues.support.verify_customer"),
        ("denied_numbers: []", "denied_numbers: [\"re:(\"]", "queues.support.denied_numbers"),
        ("denied_numbers: []", "allowed_numbers: [\"_9-0\"]", "queues.support.allowed_numbers"),
        ("region: US\n", "region: XX\n", "region"),
        ("    moh_class: default", "    region: Mars", "queues.support.region"),
        ("    moh_class: default", "    callback_regions: [US, ZZ]",
         "queues.support.callback_regions"),
        ("    moh_class: default", "    number_types: [mobile, premium]",
         "queues.support.number_types"),
        ("    moh_class: default", "    number_types: []", "queues.support.number_types"),
        ("dial: PJSIP/{number}@carrier", "dial: PJSIP/{number}@{trunk}", "outbound.dial"),
        ("url: http://127.0.0.1:8088", "url: http://[::1", "ari.url"),
        ("url: http://127.0.0.1:8088", "url: http://127.0.0.1:99999", "ari.url"),
        ("mon-fri: [\"08:00-18:00\"]", "mon-fri: [\"08:00-24:30\"]",
         "queues.support.hours.mon-fri"),
        ("mon-fri: [\"08:00-18:00\"]", "mon-fry: [\"08:00-18:00\"]",
         "queues.support.hours.mon-fry"),
    ],
)
def test_bad_values_name_the_key_and_line(old: str, new: str, key: str) -> None:
    assert old in EXAMPLE
    text = EXAMPLE.replace(old, new)
    with pytest.raises(ConfigError) as err:
        loads(text, base_dir=REPO)
    assert err.value.key == key
    assert err.value.line is not None
    assert str(err.value).startswith(f"{key} (line {err.value.line})")
    # The line named is the key's own line.
    assert key.rsplit(".", 1)[-1] + ":" in text.splitlines()[err.value.line - 1]


def test_missing_password_and_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ari.password"):
        loads(EXAMPLE.replace("password: CHANGE-ME", "password: ''"), base_dir=REPO)
    text = EXAMPLE.replace("    moh_class: default",
                           "    moh_class: default\n    prompts:\n      offer: en/nope")
    with pytest.raises(ConfigError, match=r"queues.support.prompts.offer.*does not exist"):
        loads(text, base_dir=REPO)


def test_no_overflow_condition_refused() -> None:
    text = EXAMPLE.replace("    max_waiting: 5 ", "    #").replace("    max_ewt: 5m ", "    #")
    with pytest.raises(ConfigError, match="max_waiting"):
        loads(text, base_dir=REPO)


def test_not_yaml() -> None:
    with pytest.raises(ConfigError, match=r"line 3\): not valid YAML"):
        loads("ari:\n  url: [unclosed\n", base_dir=REPO)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1.5h", 5400),
                                                ("7d", 604800), ("45", 45), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("max_ewt: 5m ", "max_ewt: soon ")
                   .replace("dir: prompts ", f"dir: {REPO / 'prompts'} "))
    out = subprocess.run([sys.executable, "-m", "ivr.cli", "check-config", str(bad)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert "queues.support.max_ewt" in out.stderr and "line" in out.stderr
    good = subprocess.run([sys.executable, "-m", "ivr.cli", "check-config",
                           str(REPO / "config.example.yaml")],
                          capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr


# --------------------------------------------------------------------------- numbers (R13)


def example(**replace: str) -> str:
    text = EXAMPLE
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


QUEUE_LINE = "    moh_class: default"


def with_queue_keys(*lines: str) -> str:
    return EXAMPLE.replace(QUEUE_LINE, "\n".join([QUEUE_LINE, *(f"    {x}" for x in lines)]))


def test_safe_policy_is_the_default() -> None:
    text = EXAMPLE.replace("    denied_numbers: []", "    #")
    q = loads(text, base_dir=REPO).queues["support"]
    assert q.region == "US" and q.callback_regions == ("US",)
    assert q.number_types == DEFAULT_TYPES
    assert q.allowed_numbers == () and q.denied_numbers == ()
    guard = q.number_guard()
    assert guard.check("+12015550123") is None
    assert guard.check("+442079460000") == "international"
    assert guard.check("+19005550123") == "type: premium_rate"


def test_region_is_required() -> None:
    with pytest.raises(ConfigError) as err:
        loads(EXAMPLE.replace("region: US\n", ""), base_dir=REPO)
    assert err.value.key == "region" and err.value.line is not None
    assert "set region: to your country's ISO 3166 code, e.g. US, GB, DE" in str(err.value)


def test_queue_region_and_widening() -> None:
    cfg = loads(with_queue_keys("region: gb", "number_types: [mobile, fixed_line]"),
                base_dir=REPO)
    q = cfg.queues["support"]
    assert q.region == "GB" and q.callback_regions == ("GB",)
    assert q.number_types == ("mobile", "fixed_line")
    assert q.number_guard().check("+442079460000") is None
    wide = loads(with_queue_keys("callback_regions: [US, CA]"), base_dir=REPO)
    guard = wide.queues["support"].number_guard()
    assert guard.check("+16135550123") is None  # Ottawa
    assert guard.check("+442079460000") == "international"


@pytest.mark.parametrize(
    "pattern", ["_[9", "_0-9", "re:(", "_9-0", "_[9-0]", "_", "_X?", "12a", "", "re:[a"]
)
def test_bad_patterns_refused(pattern: str) -> None:
    for key in ("allowed_numbers", "denied_numbers"):
        text = example(**{"    denied_numbers: []": f"    {key}: [{json.dumps(pattern)}]"})
        with pytest.raises(ConfigError) as err:
            loads(text, base_dir=REPO)
        assert err.value.key == f"queues.support.{key}"
        assert key in text.splitlines()[(err.value.line or 0) - 1]


@pytest.mark.parametrize("pattern", ["_NXX.", "re:^\\+1900", "+12015550123", "_[2-9]XX!",
                                     "_1[2-9]XXNXXXXXX"])
def test_good_patterns_accepted(pattern: str) -> None:
    text = example(**{"    denied_numbers: []": f"    denied_numbers: [{json.dumps(pattern)}]"})
    q = loads(text, base_dir=REPO).queues["support"]
    assert q.denied_numbers == (pattern,)
    q.number_guard()


def test_every_accepted_config_builds_its_guards() -> None:
    """check-config = run: whatever loads, the service can build its guards from."""
    variants = [
        EXAMPLE,
        with_queue_keys("region: DE", "callback_regions: [DE, AT, CH]"),
        with_queue_keys("number_types: [" + ", ".join(NUMBER_TYPES) + "]"),
        example(**{"    denied_numbers: []": '    denied_numbers: ["_00.", "re:^\\\\+44"]\n'
                                              '    allowed_numbers: ["_X."]'}),
    ]
    for text in variants:
        cfg = loads(text, base_dir=REPO)
        for q in cfg.queues.values():
            guard = q.number_guard()
            num = guard.parse("+12015550123")
            assert num is not None
            guard.check(num)
            assert cfg.outbound.dial_string(num)


# --------------------------------------------------------------------------- dial template


@pytest.mark.parametrize(
    "dial",
    [
        "PJSIP/{number}@{trunk}",
        "PJSIP/{number!r}@c",
        "PJSIP/{number:>20}@c",
        "PJSIP/{}@c",
        "PJSIP/{0}@c",
        "PJSIP/{number.real}@c",
        "PJSIP/{number[0]}@c",
        "PJSIP/{number@c",
        "PJSIP/}{number}@c",
        "PJSIP/{{number}}@c",  # literal braces: no field at all
        "PJSIP/carrier",
        "{number}@carrier",
        "{number}/carrier",
        "number",
    ],
)
def test_bad_dial_templates(dial: str) -> None:
    text = example(**{"dial: PJSIP/{number}@carrier ": f"dial: {json.dumps(dial)} "})
    with pytest.raises(ConfigError) as err:
        loads(text, base_dir=REPO)
    assert err.value.key == "outbound.dial"
    assert "dial:" in text.splitlines()[(err.value.line or 0) - 1]


@pytest.mark.parametrize(
    ("dial", "raw", "region", "expected"),
    [
        ("PJSIP/{number}@carrier", "2015550123", "US", "PJSIP/+12015550123@carrier"),
        ("PJSIP/{e164}@carrier", "+1 201 555 0123", "US", "PJSIP/+12015550123@carrier"),
        ("PJSIP/{national}@carrier", "2015550123", "US", "PJSIP/2015550123@carrier"),
        ("PJSIP/{national}@carrier", "+442079460000", "GB", "PJSIP/02079460000@carrier"),
        ("SIP/carrier/9{national}", "020 7946 0000", "GB", "SIP/carrier/902079460000"),
        ("Local/{{x}}{number}@out", "2015550123", "US", "Local/{x}+12015550123@out"),
    ],
)
def test_dial_string(dial: str, raw: str, region: str, expected: str) -> None:
    text = example(**{"dial: PJSIP/{number}@carrier ": f"dial: {json.dumps(dial)} "})
    cfg = loads(text, base_dir=REPO)
    num = parse(raw, region)
    assert num is not None
    assert cfg.outbound.dial_string(num) == expected


# --------------------------------------------------------------------------- business hours

NY = ZoneInfo("America/New_York")


def hours_cfg(*lines: str, tz: str = "America/New_York") -> BusinessHours:
    block = "\n".join(f"      {x}" for x in lines)
    text = example(**{"      timezone: America/New_York\n      mon-fri: [\"08:00-18:00\"]":
                      f"      timezone: {tz}\n{block}"})
    hours = loads(text, base_dir=REPO).queues["support"].hours
    assert hours is not None
    return hours


def at(day: int, hh: int, mm: int = 0, ss: int = 0, tz: ZoneInfo = NY) -> float:
    """A timestamp in the week of Monday 2024-01-08 (day 0 = Monday)."""
    return datetime(2024, 1, 8 + day, hh, mm, ss, tzinfo=tz).timestamp()


def test_wrapping_day_range() -> None:
    hours = hours_cfg('fri-mon: ["08:00-18:00"]')
    assert sorted(hours.days) == [0, 4, 5, 6]
    assert hours.is_open(at(4, 8)) and hours.is_open(at(5, 10)) and hours.is_open(at(6, 12))
    assert hours.is_open(at(0, 17, 59, 59))
    assert not hours.is_open(at(0, 18)) and not hours.is_open(at(4, 7, 59))
    for day in (1, 2, 3):
        assert not hours.is_open(at(day, 12))


def test_single_day_range_and_full_week() -> None:
    assert sorted(hours_cfg('mon-mon: ["09:00-10:00"]').days) == [0]
    assert sorted(hours_cfg('sun-sat: ["09:00-10:00"]').days) == list(range(7))
    assert sorted(hours_cfg('Sat-Sun: ["09:00-10:00"]').days) == [5, 6]


def test_midnight_and_overlaps() -> None:
    hours = hours_cfg('sun: ["22:00-24:00"]', 'mon: ["00:00-02:00", "08:00-12:00", '
                      '"11:00-14:00"]')
    assert hours.is_open(at(6, 23, 59, 59)) and hours.is_open(at(0, 0))
    # Open from Sunday 22:00 to Monday 02:00: the close is Monday 02:00, not midnight.
    assert hours.seconds_to_close(at(6, 23)) == 3 * 3600
    assert hours.seconds_to_close(at(0, 1)) == 3600
    # Overlapping ranges are one opening, 08:00-14:00.
    assert hours.seconds_to_close(at(0, 9)) == 5 * 3600
    assert not hours.is_open(at(0, 14)) and hours.seconds_to_close(at(0, 14)) == 0


def test_seconds_to_close_across_dst() -> None:
    hours = hours_cfg('sun: ["00:00-12:00"]')
    # 2024-03-10: New York springs forward at 02:00; 01:00 -> 12:00 is 10 real hours.
    now = datetime(2024, 3, 10, 1, 0, tzinfo=NY).timestamp()
    assert hours.is_open(now)
    assert hours.seconds_to_close(now) == 10 * 3600


def test_hours_without_any_opening_refused() -> None:
    text = example(**{'      mon-fri: ["08:00-18:00"]': "      mon-fri: []"})
    with pytest.raises(ConfigError, match="no opening hours") as err:
        loads(text, base_dir=REPO)
    assert err.value.key == "queues.support.hours"
    assert "hours:" in text.splitlines()[(err.value.line or 0) - 1]


DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@settings(max_examples=60, deadline=None)
@given(
    first=st.integers(0, 6),
    span=st.integers(0, 6),
    start=st.integers(0, 24 * 60 - 1),
    length=st.integers(1, 24 * 60),
    tz=st.sampled_from(["UTC", "Asia/Tokyo", "America/New_York", "Europe/Berlin"]),
    offset=st.integers(0, 24 * 3600),
)
def test_hours_open_at_the_listed_times(first: int, span: int, start: int, length: int,
                                        tz: str, offset: int) -> None:
    """Whatever the hours parser accepts opens at the listed times (a week in January:
    no DST change)."""
    end = min(start + length, 24 * 60)
    spec_day = DAY_NAMES[first] if span == 0 else \
        f"{DAY_NAMES[first]}-{DAY_NAMES[(first + span) % 7]}"
    rng = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    hours = hours_cfg(f'{spec_day}: ["{rng}"]', tz=tz)
    zone = ZoneInfo(tz)
    listed = {(first + i) % 7 for i in range(span + 1)}
    assert set(hours.days) == listed
    second = start * 60 + offset % ((end - start) * 60)  # inside the range
    for day in range(7):
        t = at(day, 0, tz=zone) + second
        assert hours.is_open(t) == (day in listed), (day, second)
        if day in listed:
            assert 0 < hours.seconds_to_close(t) <= end * 60 - second + 6 * 86400


# --------------------------------------------------------------------------- reading the file


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    data = EXAMPLE.encode()
    pos = data.index(b"CHANGE-ME")
    path.write_bytes(data[:pos] + b"\xff\xfe" + data[pos:])
    with pytest.raises(ConfigError, match=rf"not UTF-8 text: byte 0xff at byte {pos}") as err:
        load(path, env={})
    assert err.value.line == EXAMPLE[:pos].count("\n") + 1


def test_directory_as_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml", env={})


@pytest.mark.parametrize("nested", ["[" * 10000 + "]" * 10000, "{a: " * 10000 + "}" * 10000])
def test_deep_nesting_refused(nested: str) -> None:
    with pytest.raises(ConfigError, match="nested more than"):
        loads(EXAMPLE + f"extra: {nested}\n", base_dir=REPO)


def test_aliases_refused_and_no_bomb() -> None:
    text = example(**{"  app: ivr ": "  app: &app ivr "}) + "log_level: *app\n"
    with pytest.raises(ConfigError, match="aliases") as err:
        loads(text, base_dir=REPO)
    assert err.value.line == len(text.splitlines())
    # "Billion laughs": 10**9 x's if the aliases were expanded.
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="aliases"):
        loads(bomb, base_dir=REPO)
    assert time.monotonic() - t0 < 1


def test_nul_and_control_characters() -> None:
    with pytest.raises(ConfigError, match=r"line 2\): not valid YAML"):
        loads("region: US\nari: \x00\n", base_dir=REPO)


def test_bad_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_bytes(b"en: &x\n  offer: {file: en/offer}\nfr: *x\n")
    text = example(**{"dir: prompts ": f"dir: {tmp_path} "})
    with pytest.raises(ConfigError, match="aliases") as err:
        loads(text, base_dir=REPO)
    assert err.value.key == "prompts.dir"
    (tmp_path / "manifest.yaml").write_bytes(b"en: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        loads(text, base_dir=REPO)
    assert err.value.key == "prompts.dir"


def test_lines_of_keys() -> None:
    cfg = loads(EXAMPLE, base_dir=REPO)
    lines = EXAMPLE.splitlines()
    assert lines[cfg.lines["store.path"] - 1].strip().startswith("path:")
    assert lines[cfg.lines["queues.support.max_ewt"] - 1].strip().startswith("max_ewt:")
    # Not written: the nearest written parent.
    assert cfg.line_of("queues.support.region") == cfg.lines["queues.support"]
    assert cfg.line_of("nothing.here") is None


# ---------------------------------------------------------------- several nodes, store url

NODES = """asterisk:
  a:
    url: http://10.0.0.11:8088
    password: pw-a
    trunk: "PJSIP/{agent}@node-a"
  b:
    url: http://10.0.0.12:8088
    password: pw-b
    trunk: "PJSIP/{agent}@node-b"
"""


def with_nodes(nodes: str = NODES, **agent_nodes: str) -> str:
    """The example with ``asterisk:`` nodes instead of ``ari:``; ``agent_nodes``: each
    agent's ``node:``."""
    text = EXAMPLE
    start = text.index("ari:\n")
    end = text.index("\nhttp:")
    text = text[:start] + nodes + text[end:]
    for agent, node in agent_nodes.items():
        text = text.replace(f"  {agent}:\n", f"  {agent}:\n    node: {node}\n", 1)
    return text


def test_several_nodes() -> None:
    cfg = loads(with_nodes(bob="b"), base_dir=REPO, env={"IVR_ARI_PASSWORD_B": "from-env"})
    assert list(cfg.nodes) == ["a", "b"]
    assert cfg.nodes["b"].ari.password == "from-env" and cfg.nodes["a"].ari.password == "pw-a"
    assert cfg.ari is cfg.nodes["a"].ari  # the first node's
    assert (cfg.agents["alice"].node, cfg.agents["bob"].node) == ("a", "b")
    assert cfg.nodes["b"].trunk_dial("PJSIP/agent2") == "PJSIP/agent2@node-b"
    assert cfg.node("") is cfg.nodes["a"] and cfg.node("gone") is cfg.nodes["a"]
    assert cfg.node_down_after == 60


def test_one_node_from_ari() -> None:
    cfg = loads(EXAMPLE, base_dir=REPO, env={})
    assert list(cfg.nodes) == ["asterisk"] and cfg.nodes["asterisk"].ari is cfg.ari
    assert cfg.agents["alice"].node == "asterisk" and cfg.store_url == ""


@pytest.mark.parametrize(("text", "key", "words"), [
    (EXAMPLE.replace("region: US\n", "region: US\n" + NODES), "asterisk", "not both"),
    (with_nodes(NODES.replace('    trunk: "PJSIP/{agent}@node-b"\n', "")),
     "asterisk.b.trunk", "required with several nodes"),
    (with_nodes(NODES.replace("{agent}@node-b", "{agnt}@node-b")), "asterisk.b.trunk",
     "{agent}"),
    (with_nodes(NODES.replace("{agent}@node-b", "node-b")), "asterisk.b.trunk", "{agent}"),
    (with_nodes(NODES.replace('"PJSIP/{agent}@node-b"', '"{agent}"')), "asterisk.b.trunk",
     "technology"),
    (with_nodes(NODES.replace("  b:\n", "  B!:\n")), "asterisk.B!", "lower-case"),
    (with_nodes(NODES.replace("    password: pw-b\n", "    password: pw-b\n    app: other\n")),
     "asterisk.b.app", "one Stasis app"),
    (with_nodes(bob="c"), "agents.bob.node", "unknown Asterisk node"),
    (with_nodes(NODES.replace("    password: pw-a\n", "")), "asterisk.a.password",
     "IVR_ARI_PASSWORD_A"),
    (with_nodes("asterisk: {}\n"), "asterisk", "at least one node"),
    (with_nodes("asterisk: [a, b]\n"), "asterisk", "must be a mapping"),
    (EXAMPLE.replace("  path: var/ivr.sqlite3 ", "  url: mysql://u:hunter2@db/x "),
     "store.url", "postgresql://"),
    (EXAMPLE.replace("  path: var/ivr.sqlite3 ",
                     "  url: postgresql://u:hunter2@db/x\n  path: x.db "),
     "store.url", "not both"),
    (EXAMPLE.replace("region: US\n", "region: US\nnode_down_after: 0.5s\n"),
     "node_down_after", "at least"),
])
def test_bad_nodes_and_store_urls(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, base_dir=REPO, env={})
    assert info.value.key == key and words in str(info.value), str(info.value)
    assert "hunter2" not in str(info.value)  # a URL's password is never echoed


def test_store_url_and_its_environment() -> None:
    url = "postgresql://ivr:s3cret@db.example.internal/ivr"
    cfg = loads(EXAMPLE, base_dir=REPO, env={"IVR_STORE_URL": url})
    assert cfg.store_url == url
    shown = json.dumps(__import__("ivr.config").config.as_dict(cfg))
    assert "s3cret" not in shown and "db.example.internal" in shown


def test_same_endpoint_on_two_nodes_is_two_phones() -> None:
    text = with_nodes(bob="b").replace("endpoint: PJSIP/agent2", "endpoint: PJSIP/agent1")
    cfg = loads(text, base_dir=REPO, env={})
    assert cfg.agents["bob"].endpoint == cfg.agents["alice"].endpoint == "PJSIP/agent1"
    with pytest.raises(ConfigError, match="already used by agent alice"):
        loads(with_nodes().replace("endpoint: PJSIP/agent2", "endpoint: PJSIP/agent1"),
              base_dir=REPO, env={})
