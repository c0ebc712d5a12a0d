"""Config: a good file loads; every bad one is refused with the key and line named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ivr.config import ConfigError, load, loads, parse_duration

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text()


def test_example_loads() -> None:
    cfg = load(REPO / "config.example.yaml", env={})
    q = cfg.queues["support"]
    assert q.first_offer_after == 30 and q.repeat_offer_every == 120
    assert q.max_waiting == 5 and q.max_ewt == 300
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
        ("allowed_numbers: [\"_NXXNXXXXXX\", \"_1NXXNXXXXXX\"]",
         "allowed_numbers: [\"re:(\"]", "queues.support.allowed_numbers"),
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
