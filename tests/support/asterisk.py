"""The sandboxed Asterisk 22 (``rig.sandbox``) the real tiers run against: the session's
shared one (the ``asterisk`` fixture) and the ones a test starts of its own (to restart
it, or with other options)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from rig import sandbox
from rig.sandbox import AsteriskInstance

REPO = Path(__file__).resolve().parent.parent.parent


def start_asterisk(**kwargs: Any) -> AsteriskInstance:
    """Provision (once) and start a sandboxed Asterisk; FAIL (never skip) if impossible."""
    if os.geteuid() != 0:
        pytest.fail(
            "the real-Asterisk tests need root (chroot, mmdebstrap): run pytest as root",
            pytrace=False,
        )
    try:
        rootfs = sandbox.provision()
        return sandbox.start(
            rootfs,
            config_src=REPO / "asterisk-config",
            prompts_src=REPO / "prompts",
            **kwargs,
        )
    except sandbox.SandboxError as exc:
        pytest.fail(f"cannot run the sandboxed Asterisk: {exc}", pytrace=False)


def finish_asterisk(inst: AsteriskInstance) -> None:
    """Stop; keep the run dir (logs, config) only when IVR_KEEP_RUNS is set."""
    if os.environ.get("IVR_KEEP_RUNS"):
        inst.stop()
    else:
        inst.remove()
