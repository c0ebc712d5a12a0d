"""Build a real config file for the service under test, pointed at the sandbox."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ivr.config import Config, load
from rig.sandbox import AsteriskInstance

REPO = Path(__file__).resolve().parent.parent

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
    doc: dict[str, Any] = {
        "region": "US",
        "ari": {"url": inst.ari_url, "user": inst.ari_user, "password": inst.ari_password,
                "app": inst.app_name},
        "store": {"path": str(tmp_path / "ivr.sqlite3")},
        "prompts": {"dir": str(REPO / "prompts"), "asterisk_dir": inst.prompts_dir},
        "outbound": {"dial": "PJSIP/{number}@carrier", "dial_timeout": "5s"},
        "queues": qdoc,
        "agents": dict(agents or {}),
        "log_level": "DEBUG",
        **top,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load(path, env={})
