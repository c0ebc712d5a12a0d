"""Build a real config file for the service under test, pointed at the sandbox."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ivr.config import Config, load
from rig.sandbox import AsteriskInstance

REPO = Path(__file__).resolve().parent.parent.parent

# Short timings: tests never sleep through the real 30 s / 120 s.
FAST_QUEUE: dict[str, Any] = {
    "max_waiting": 1,
    "first_offer_after": "2s",
    "repeat_offer_every": "4s",
    "ring_timeout": "4s",
    "preview_timeout": "6s",
    "retry_interval": "2s",
    "wrap_up": "0s",
}
# Short stand-ins for the long prompts where a test is about timing, not words.
SHORT = {"offer": "en/connecting", "confirmation": "en/minutes"}
# Callback queues: overflow by EWT while no agent serves (agents start not-ready), one
# offer 1 s after arrival, no repeat within a test.
CB_QUEUE: dict[str, Any] = {"max_waiting": None, "max_ewt": "30s", "first_offer_after": "1s",
                            "repeat_offer_every": "60s", "prompts": SHORT}


def agents_cfg(*names: str, queue: str) -> dict[str, dict[str, Any]]:
    """Agents ``names`` (endpoint ``PJSIP/<name>``), each serving ``queue``."""
    return {n: {"endpoint": f"PJSIP/{n}", "queues": [queue]} for n in names}


def write_config(
    inst: AsteriskInstance,
    tmp_path: Path,
    queues: Mapping[str, Mapping[str, Any]],
    agents: Mapping[str, Mapping[str, Any]] | None = None,
    **top: Any,
) -> Config:
    """One YAML file as an operator would write it; queues named q7xxx take DID 7xxx."""
    qdoc: dict[str, Any] = {}
    for name, q in queues.items():
        did = name[1:] if name.startswith("q7") else q["did"]
        qdoc[name] = {"did": did, "caller_id": "5550100", **FAST_QUEUE, **q}
    ari = {"url": inst.ari_url, "user": inst.ari_user, "password": inst.ari_password,
           "app": inst.app_name}
    return write(tmp_path, ari=ari, asterisk_dir=inst.prompts_dir, queues=qdoc,
                 agents=agents, **top)


def write(
    tmp_path: Path,
    *,
    ari: Mapping[str, str],
    asterisk_dir: str,
    queues: Mapping[str, Any],
    agents: Mapping[str, Mapping[str, Any]] | None = None,
    **top: Any,
) -> Config:
    """The file every test config is: region US, the repo's prompts, a store in
    ``tmp_path``, the carrier dial template; ``top`` adds/overrides top-level keys."""
    doc: dict[str, Any] = {
        "region": "US",
        "ari": dict(ari),
        "store": {"path": str(tmp_path / "ivr.sqlite3")},
        "prompts": {"dir": str(REPO / "prompts"), "asterisk_dir": asterisk_dir},
        "outbound": {"dial": "PJSIP/{number}@carrier", "dial_timeout": "5s"},
        "queues": dict(queues),
        "agents": dict(agents or {}),
        "log_level": "DEBUG",
        **top,
    }
    if "asterisk" in top:  # several nodes instead of ari:
        del doc["ari"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load(path, env={})
