"""Console logins in the config (agents' password hashes, supervisors, the token's
scopes), ``ivr hash-password``, the scrypt hashes, and JSON logs."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ivr import logs, passwords
from ivr.config import Config, ConfigError, loads
from ivr.flows.session import ItemLogger

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text()
HASH = passwords.hash_password("a-good-password")
ALICE_HASH_LINE = '    # password_hash: "scrypt$16384$8$1$..."\n'  # in the example, under alice


def cfg(extra: str = "", replace: tuple[str, str] = ("", ""), env: dict[str, str] | None = None
        ) -> Config:
    text = EXAMPLE.replace("dir: prompts ", f"dir: {REPO / 'prompts'} ")
    if replace[0]:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1])
    return loads(text + extra, base_dir=REPO, env=env or {})


def test_hashes_verify_and_refuse() -> None:
    assert passwords.verify("a-good-password", HASH)
    assert not passwords.verify("a-good-passwore", HASH)
    assert not passwords.verify("a-good-password", "plain-text")
    assert passwords.hash_password("a-good-password") != HASH  # salted
    for bad in ("scrypt$16$8$1$AAAA$AAAA", "scrypt$1048577$8$1$c2FsdHNhbHQ=$" + "A" * 44,
                "scrypt$16384$8$1$not base64!$AAAA", "md5$x"):
        with pytest.raises(passwords.BadHash):
            passwords.parse(bad)


def test_supervisors_and_agent_logins() -> None:
    c = cfg(f'supervisors:\n  sam:\n    name: Sam\n    password_hash: "{HASH}"\n',
            (ALICE_HASH_LINE, f'    password_hash: "{HASH}"\n'))
    assert c.supervisors["sam"].name == "Sam"
    assert c.agents["alice"].password_hash == HASH
    assert c.agents["bob"].password_hash == ""


@pytest.mark.parametrize(("extra", "replace", "key"), [
    ('supervisors:\n  sam:\n    name: Sam\n', ("", ""), "supervisors.sam.password_hash"),
    ('supervisors:\n  sam:\n    password_hash: "md5$abc"\n', ("", ""),
     "supervisors.sam.password_hash"),
    (f'supervisors:\n  alice:\n    password_hash: "{HASH}"\n', ("", ""), "supervisors.alice"),
    ('supervisors:\n  "bad name!":\n    password_hash: x\n', ("", ""), "supervisors.bad name!"),
    ("log_format: xml\n", ("", ""), "log_format"),
    ("", ("  port: 8080\n", "  port: 8080\n  api_scopes: [read, everything]\n"),
     "http.api_scopes"),
    ("", (ALICE_HASH_LINE, "    password_hash: x\n"), "agents.alice.password_hash"),
])
def test_bad_login_config_names_the_key(extra: str, replace: tuple[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(extra, replace)
    assert str(err.value).startswith(key), str(err.value)


def test_password_from_the_environment_is_hashed() -> None:
    c = cfg('supervisors:\n  sam-lead:\n    name: Sam\n',
            env={"IVR_PASSWORD_SAM_LEAD": "env-secret-1", "IVR_PASSWORD_ALICE": "env-secret-2"})
    sup = c.supervisors["sam-lead"]
    assert passwords.verify("env-secret-1", sup.password_hash)
    assert "env-secret" not in sup.password_hash
    assert passwords.verify("env-secret-2", c.agents["alice"].password_hash)


def test_scopes_default_to_all() -> None:
    assert cfg().http.api_scopes == ("read", "callbacks", "agents")


def test_hash_password_cli() -> None:
    run = subprocess.run([sys.executable, "-m", "ivr.cli", "hash-password"],
                         input="a-good-password\n", capture_output=True, text=True, check=True)
    hashed = run.stdout.strip()
    assert passwords.verify("a-good-password", hashed) and "a-good-password" not in run.stdout
    short = subprocess.run([sys.executable, "-m", "ivr.cli", "hash-password"], input="short\n",
                           capture_output=True, text=True)
    assert short.returncode == 1 and "8 characters" in short.stderr and not short.stdout


def test_json_logs_carry_the_work_item() -> None:
    stream = io.StringIO()
    logs.setup("INFO", "json")
    root = logging.getLogger()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        ItemLogger(logging.getLogger("ivr.flows.test"), {"item": "abc123", "chan": "c9"}).info(
            "callback committed at position %d", 3)
    finally:
        root.removeHandler(handler)
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert (record["item"], record["chan"], record["level"]) == ("abc123", "c9", "INFO")
    assert record["message"].endswith("callback committed at position 3")
    assert record["logger"] == "ivr.flows.test" and "time" in record
