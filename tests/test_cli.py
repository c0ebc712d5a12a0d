"""``ivr check-config`` = ``ivr run``: every file run would refuse or crash on is refused
by check-config, exit code 2, with the dotted key and the line; nothing starts.

No Asterisk and no root needed: run is only driven as far as its start-up checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ivr import cli
from ivr import store as store_mod
from ivr.config import load
from ivr.store import MIGRATIONS, SqliteStore
from rig.sandbox import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text()
MESSAGE = re.compile(r"^ivr: bad configuration: (?P<key>[\w.-]+)(?: \(line (?P<line>\d+)\))?: ")


def config_text(tmp_path: Path, **replace: str) -> str:
    """The example, pointed at the repo's prompts and a store under ``tmp_path``."""
    text = EXAMPLE.replace("dir: prompts ", f"dir: {REPO / 'prompts'} ").replace(
        "path: var/ivr.sqlite3 ", f"path: {tmp_path / 'var' / 'ivr.sqlite3'} "
    )
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "config.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str], command: str = "check-config"
          ) -> tuple[int, str, str]:
    rc = cli.main([command, str(path)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def make_db(path: Path, version: int | None = None) -> None:
    async def build() -> None:
        store = await SqliteStore.open(path)
        await store.close()

    asyncio.run(build())
    if version is not None:
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
        conn.close()


def with_store(prepare: Callable[[Path], None], store: str = "var/ivr.sqlite3"
               ) -> Callable[[Path], str | bytes]:
    def build(tmp_path: Path) -> str:
        target = tmp_path / store
        prepare(target)
        return config_text(tmp_path, **{f"path: {tmp_path / 'var' / 'ivr.sqlite3'} ":
                                        f"path: {target} "})
    return build


def random_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(7).randbytes(4096))


def parent_is_a_file(path: Path) -> None:
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    path.parent.write_text("not a directory")


def newer_schema(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_db(path, version=len(MIGRATIONS) + 1)


def edit(**replace: str) -> Callable[[Path], str | bytes]:
    return lambda tmp_path: config_text(tmp_path, **replace)


def non_utf8(tmp_path: Path) -> bytes:
    return config_text(tmp_path).replace("CHANGE-ME", "CHANGE\udcffME").encode(
        "utf-8", "surrogateescape"
    )


def deep(tmp_path: Path) -> str:
    return config_text(tmp_path) + "extra: " + "[" * 10_000 + "]" * 10_000 + "\n"


def aliases(tmp_path: Path) -> str:
    return config_text(tmp_path, **{"  app: ivr ": "  app: &a ivr "}) + "log_level: *a\n"


DIAL = "dial: PJSIP/{number}@carrier "
DENIED = "denied_numbers: []"
QUEUE = "    moh_class: default"

BAD: list[tuple[str, Callable[[Path], str | bytes], str]] = [
    ("dial unknown field", edit(**{DIAL: "dial: PJSIP/{number}@{trunk} "}), "outbound.dial"),
    ("dial conversion", edit(**{DIAL: "dial: PJSIP/{number!r}@c "}), "outbound.dial"),
    ("dial format spec", edit(**{DIAL: "dial: PJSIP/{number:>5}@c "}), "outbound.dial"),
    ("dial positional", edit(**{DIAL: "dial: PJSIP/{}@c "}), "outbound.dial"),
    ("dial index", edit(**{DIAL: "dial: PJSIP/{0}@c "}), "outbound.dial"),
    ("dial unbalanced", edit(**{DIAL: "dial: PJSIP/{number@c "}), "outbound.dial"),
    ("dial no field", edit(**{DIAL: "dial: PJSIP/carrier "}), "outbound.dial"),
    ("pattern [", edit(**{DENIED: 'denied_numbers: ["_[9"]'}), "queues.support.denied_numbers"),
    ("pattern -", edit(**{DENIED: 'denied_numbers: ["_0-9"]'}), "queues.support.denied_numbers"),
    ("pattern re", edit(**{DENIED: 'denied_numbers: ["re:("]'}), "queues.support.denied_numbers"),
    ("pattern range", edit(**{DENIED: 'denied_numbers: ["_[9-0]"]'}),
     "queues.support.denied_numbers"),
    ("allowed pattern", edit(**{DENIED: 'allowed_numbers: ["_9-0"]'}),
     "queues.support.allowed_numbers"),
    ("region XX", edit(**{"region: US\n": "region: XX\n"}), "region"),
    ("region missing", edit(**{"region: US\n": ""}), "region"),
    ("queue region", edit(**{QUEUE: QUEUE + "\n    region: EU"}), "queues.support.region"),
    ("callback region", edit(**{QUEUE: QUEUE + "\n    callback_regions: [ZZ]"}),
     "queues.support.callback_regions"),
    ("number type", edit(**{QUEUE: QUEUE + "\n    number_types: [premium]"}),
     "queues.support.number_types"),
    ("hours range", edit(**{'mon-fri: ["08:00-18:00"]': 'mon-fri: ["18:00-08:00"]'}),
     "queues.support.hours.mon-fri"),
    ("ari url", edit(**{"url: http://127.0.0.1:8088": "url: http://[::1"}), "ari.url"),
    ("not UTF-8", non_utf8, "config"),
    ("deep nesting", deep, "config"),
    ("aliases", aliases, "config"),
    ("store parent is a file", with_store(parent_is_a_file), "store.path"),
    ("store is a directory", with_store(lambda p: p.mkdir(parents=True)), "store.path"),
    ("store random bytes", with_store(random_file), "store.path"),
    ("store newer schema", with_store(newer_schema), "store.path"),
]


@pytest.mark.parametrize(("build", "key"), [(b, k) for _, b, k in BAD],
                         ids=[name for name, _, _ in BAD])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_configs_refused_with_key_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    build: Callable[[Path], str | bytes], key: str, command: str,
) -> None:
    content = build(tmp_path)
    path = write(tmp_path, content)
    rc, out, err = check(path, capsys, command)
    assert rc == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    m = MESSAGE.match(err)
    assert m is not None, err
    assert m.group("key") == key, err
    assert m.group("line") is not None, err
    line = int(m.group("line"))
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    lines = text.splitlines()
    assert 1 <= line <= len(lines)
    if key != "config":
        # The key's own line (a required key that is missing: its parent's).
        written = re.compile(rf"^\s*{re.escape(key.rsplit('.', 1)[-1])}:")
        if any(written.match(x) for x in lines):
            assert written.match(lines[line - 1]), (key, lines[line - 1])


def test_directory_or_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (tmp_path, tmp_path / "missing.yaml"):
        rc, _, err = check(path, capsys)
        assert rc == 2
        assert err.startswith("ivr: bad configuration: config: cannot read"), err


def test_check_config_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    path = write(tmp_path, config_text(tmp_path))
    rc, out, err = check(path, capsys)
    assert rc == 0, err
    assert json.loads(out)["ok"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_accepted_config_would_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What check-config accepts, run can use: guards, dial strings, the store."""
    text = config_text(tmp_path, **{
        QUEUE: QUEUE + "\n    callback_regions: [US, CA]\n    number_types: [mobile, voip]",
        DIAL: "dial: SIP/carrier/{national} ",
    })
    path = write(tmp_path, text)
    rc, _, err = check(path, capsys)
    assert rc == 0, err
    cfg = load(path, env={})
    for q in cfg.queues.values():
        guard = q.number_guard()
        num = guard.parse("(201) 555-0123")
        assert num is not None
        assert cfg.outbound.dial_string(num) == "SIP/carrier/2015550123"
    make_db(cfg.store_path)  # what run does first
    assert store_mod.probe(cfg.store_path) is None
    rc, _, err = check(path, capsys)
    assert rc == 0, err


def test_run_refuses_a_store_it_cannot_open(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a store the probe missed fails run with one line, exit 2, not a traceback."""
    db = tmp_path / "var" / "ivr.sqlite3"
    newer_schema(db)
    path = write(tmp_path, config_text(tmp_path))
    monkeypatch.setattr(store_mod, "probe", lambda _path: None)
    rc, _, err = check(path, capsys, "run")
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    m = MESSAGE.match(err)
    assert m is not None and m.group("key") == "store.path" and m.group("line"), err
    assert "newer" in err


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_an_unusable_postgresql_store_is_refused_without_its_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """check-config = run for a PostgreSQL store too: nothing listens there, exit 2
    naming store.url; the URL's password is never printed."""
    port = free_port(udp=False)
    url = f"postgresql://ivr:hunter2-secret@127.0.0.1:{port}/ivr"
    text = config_text(tmp_path).replace(
        f"path: {tmp_path / 'var' / 'ivr.sqlite3'} ", f"url: {url} ")
    rc, out, err = check(write(tmp_path, text), capsys, command)
    assert rc == 2, err
    m = MESSAGE.match(err)
    assert m is not None and m["key"] == "store.url", err
    assert "hunter2" not in out + err and f"127.0.0.1:{port}" in err
