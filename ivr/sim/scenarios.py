"""Scenarios: the config with dotted overrides, through the config's own loader.

``queues.support.max_ewt=3m`` sets that key in the YAML document, which is then loaded
with ``ivr.config.loads``: the same validation as ``ivr check-config``, so a bad value
(``max_ewt=10s``: below the 30 s minimum; a misspelt key) is a ``ConfigError`` naming
the override. The value is read as YAML (``3m``, ``5``, ``null`` to unset a key, or a
flow mapping such as ``{timezone: UTC, mon-fri: ["08:00-18:00"]}``).

Keys under ``sim.`` are the simulation's own parameters, not config keys:

- ``sim.agents``: agents on duty per hour of day, ``4`` or ``8-12:4;12-14:2;14-18:4``
  (hours in the queue's time zone; not listed: none). Default: the config's agents, all
  day, each serving its own queues. With a profile, that many simulated agents serve
  every queue.
- ``sim.answer_rate``: probability a customer answers a callback attempt (default 0.8).
- ``sim.answer_delay``: how long the customer's phone rings before they answer (10s); an
  unanswered attempt takes ``outbound.dial_timeout``.
- ``sim.handle_time``: conversation length for calls whose row gives none (5m).
- ``sim.service_level``: the service-level threshold (20s).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ivr import config as config_mod
from ivr.configdoc import ConfigError, SafeLoader, decode, yaml_error
from ivr.sim.arrivals import ArrivalsError, parse_profile, parse_seconds

SIM_KEYS = ("agents", "answer_rate", "answer_delay", "handle_time", "service_level")

# ``a=1,b.c=2``: split on the commas that start a new ``key=``, so a value may hold
# commas of its own (a YAML flow list or mapping).
_ASSIGNMENTS = re.compile(r",(?=\s*[A-Za-z_][\w.-]*\s*=)")


@dataclass(frozen=True)
class SimParams:
    agents: tuple[float, ...] | None = None
    """Agents on duty per hour of day (24 values); None: the config's agents, all day."""
    answer_rate: float = 0.8
    answer_delay: float = 10.0
    handle_time: float = 300.0
    service_level: float = 20.0


@dataclass(frozen=True)
class Scenario:
    name: str
    config: config_mod.Config
    params: SimParams
    overrides: tuple[tuple[str, str], ...] = ()


def parse_assignment(text: str, option: str = "--set") -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{option} {text!r}: write KEY=VALUE, e.g. "
                          "queues.support.max_ewt=3m")
    return key, value.strip()


def parse_assignments(text: str, option: str) -> list[tuple[str, str]]:
    return [parse_assignment(part, option) for part in _ASSIGNMENTS.split(text) if part.strip()]


def parse_scenario(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``NAME:key=value,key=value``."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip() or "=" in name:
        raise ConfigError(f"--scenario {text!r}: write NAME:KEY=VALUE,KEY=VALUE, e.g. "
                          "fast:queues.support.max_ewt=1m")
    return name.strip(), parse_assignments(rest, "--scenario")


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``KEY=v1,v2,v3``."""
    key, value = parse_assignment(text, "--sweep")
    values = [v.strip() for v in value.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--sweep {text!r}: list the values, e.g. "
                          "queues.support.max_ewt=1m,2m,3m")
    return key, values


# --------------------------------------------------------------------------- the config


class Base:
    """The config file read once; ``build()`` makes a scenario from overrides."""

    def __init__(self, path: str | Path, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self.text = decode(data, str(self.path))
        environ = dict(os.environ if env is None else env)
        # The simulation never talks to Asterisk: a config that takes the ARI password
        # from the environment must still load where that variable is not set.
        environ.setdefault("IVR_ARI_PASSWORD", "unused-by-simulation")
        self.env = environ
        # Errors in the file itself come with the file's own line numbers.
        self.config = config_mod.loads(self.text, base_dir=self.path.parent, env=self.env)
        try:
            doc = yaml.load(self.text, Loader=SafeLoader)
        except (yaml.YAMLError, RecursionError) as exc:
            raise yaml_error(exc, self.text) from None
        if not isinstance(doc, dict):
            raise ConfigError("the file must be a YAML mapping")
        self.doc: dict[str, Any] = doc

    def build(self, name: str, overrides: Sequence[tuple[str, str]],
              params: SimParams) -> Scenario:
        config_keys = [(k, v) for k, v in overrides if not k.startswith("sim.")]
        for key, value in overrides:
            if key.startswith("sim."):
                params = apply_sim(params, key, value)
        if not config_keys:
            return Scenario(name, self.config, params, tuple(overrides))
        doc = _copy(self.doc)
        for key, value in config_keys:
            _set(doc, key, value)
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        try:
            cfg = config_mod.loads(text, base_dir=self.path.parent, env=self.env)
        except ConfigError as exc:
            raise _blame(exc, config_keys) from None
        return Scenario(name, cfg, params, tuple(overrides))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _set(doc: dict[str, Any], key: str, raw: str) -> None:
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {key}={raw}: not a dotted key", key)
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            have = ", ".join(str(k) for k in node) or "nothing"
            raise ConfigError(f"--set {key}={raw}: the config has no section {where} "
                              f"(there: {have})", key)
        node = child
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}={raw}: not a YAML value ({exc})", key) from None
    node[parts[-1]] = value


def _reason(exc: ConfigError) -> str:
    where = exc.key or "config"
    if exc.line is not None:
        where += f" (line {exc.line})"
    text = str(exc)
    return text[len(where) + 2:] if text.startswith(where + ": ") else text


def _blame(exc: ConfigError, overrides: Sequence[tuple[str, str]]) -> ConfigError:
    """The loader's error on the rewritten document, told as the override's fault (its
    line numbers would point into a document nobody sees)."""
    for key, value in overrides:
        if exc.key == key or exc.key.startswith(key + ".") or key.startswith(exc.key + "."):
            return ConfigError(f"--set {key}={value}: {_reason(exc)}", exc.key)
    shown = ", ".join(f"{k}={v}" for k, v in overrides)
    return ConfigError(f"with {shown}: {_reason(exc)}", exc.key)


def apply_sim(params: SimParams, key: str, raw: str) -> SimParams:
    name = key.removeprefix("sim.")
    try:
        if name == "agents":
            return dataclasses.replace(params, agents=tuple(parse_profile(raw, key)))
        if name == "answer_rate":
            rate = float(raw)
            if not 0.0 <= rate <= 1.0:
                raise ValueError("must be between 0 and 1")
            return dataclasses.replace(params, answer_rate=rate)
        if name in ("answer_delay", "handle_time", "service_level"):
            seconds = parse_seconds(raw)
            if not math.isfinite(seconds) or (seconds <= 0 and name == "handle_time"):
                raise ValueError("must be a positive duration")
            if name == "answer_delay":
                return dataclasses.replace(params, answer_delay=seconds)
            if name == "handle_time":
                return dataclasses.replace(params, handle_time=seconds)
            return dataclasses.replace(params, service_level=seconds)
    except (ValueError, ArrivalsError) as exc:
        raise ConfigError(f"--set {key}={raw}: {exc}", key) from None
    raise ConfigError(f"--set {key}={raw}: unknown simulation key (known: "
                      f"{', '.join('sim.' + k for k in SIM_KEYS)})", key)


def build_scenarios(base: Base, params: SimParams, common: Sequence[tuple[str, str]],
                    scenarios: Sequence[tuple[str, list[tuple[str, str]]]],
                    sweeps: Sequence[tuple[str, list[str]]]) -> list[Scenario]:
    """``common`` (``--set``) applies to every scenario. Without a sweep the first
    scenario is the baseline (config + ``--set``), then each ``--scenario``. Sweeps
    make one scenario per combination of their values (several sweeps: every
    combination), after the named scenarios."""
    out: list[Scenario] = []
    if not sweeps:
        out.append(base.build("baseline", list(common), params))
    for name, assignments in scenarios:
        out.append(base.build(name, [*common, *assignments], params))
    if sweeps:
        for combo in itertools.product(*(values for _, values in sweeps)):
            assignments = [(key, value) for (key, _), value in zip(sweeps, combo, strict=True)]
            name = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in assignments)
            out.append(base.build(name, [*common, *assignments], params))
    names = [s.name for s in out]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"two scenarios are named {n!r}")
    return out
