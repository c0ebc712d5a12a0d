"""The caller-experience keys of a queue: defaults keep today's behaviour; bad values
name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.config import Config, ConfigError, loads

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text().replace("dir: prompts ",
                                                              f"dir: {REPO / 'prompts'} ")
ANCHOR = "    stop_offers_before_close: 15m\n"


def with_keys(*lines: str) -> Config:
    assert ANCHOR in EXAMPLE
    return loads(EXAMPLE.replace(ANCHOR, ANCHOR + "".join(f"    {ln}\n" for ln in lines)),
                 base_dir=REPO, env={})


def test_defaults_keep_todays_behaviour() -> None:
    q = with_keys().queues["support"]
    assert (q.announce_on_arrival, q.announce_with_offer, q.min_position_for_offer,
            q.languages) == (False, False, 1, ())


def test_keys_are_read() -> None:
    q = with_keys("announce_on_arrival: true", "announce_with_offer: yes",
                  "min_position_for_offer: 3", "languages: [es, en]",
                  "language_timeout: 3s").queues["support"]
    assert (q.announce_on_arrival, q.announce_with_offer, q.min_position_for_offer,
            q.languages, q.language_timeout) == (True, True, 3, ("es", "en"), 3.0)


@pytest.mark.parametrize(("line", "key"), [
    ("min_position_for_offer: 0", "queues.support.min_position_for_offer"),
    ("languages: [en]", "queues.support.languages"),
    ("languages: [en, en]", "queues.support.languages"),
    ("languages: [en, fr]", "prompts.language"),  # no French prompts shipped
    ("announce_on_arrival: maybe", "queues.support.announce_on_arrival"),
    ("language_timeout: 0s", "queues.support.language_timeout"),
])
def test_bad_values_name_the_key(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        with_keys(line)
    assert str(err.value).startswith(key), str(err.value)
