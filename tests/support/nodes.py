"""Several sandboxed Asterisk nodes with SIP trunks between them (``rig.sandbox.start_nodes``),
as an operator runs several nodes behind one IVR, and a small ARI client for each.

``running_nodes()`` starts nodes "a" (agents a1, a2) and "b" (agents b1, b2): an agent of
b is rung from a with ``nodes["b"].trunk_dial("a").format(agent="b1")``, i.e.
``PJSIP/b1@node-b``. Each node has its own SIP/ARI ports, ARI credentials, RTP range,
carrier port and agents; they share the Stasis app name, as the IVR requires.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rig import sandbox
from rig.sandbox import AsteriskInstance
from tests.support.asterisk import REPO, finish_asterisk
from tests.support.config import write as write_test_config
from tests.support.observer import AriObserver, Event, channel_id

NODE_AGENTS: Mapping[str, Sequence[str]] = {"a": ("a1", "a2"), "b": ("b1", "b2")}


@contextlib.contextmanager
def running_nodes(
    agents: Mapping[str, Sequence[str]] = NODE_AGENTS,
) -> Iterator[dict[str, AsteriskInstance]]:
    """Provision (once) and start one node per key of ``agents``; stop them all after.
    FAILS (never skips) when the sandbox cannot run, like ``start_asterisk``."""
    if os.geteuid() != 0:
        pytest.fail(
            "the real-Asterisk tests need root (chroot, mmdebstrap): run pytest as root",
            pytrace=False,
        )
    try:
        nodes = sandbox.start_nodes(
            sandbox.provision(),
            agents,
            config_src=REPO / "asterisk-config",
            prompts_src=REPO / "prompts",
        )
    except sandbox.SandboxError as exc:
        pytest.fail(f"cannot run the sandboxed Asterisk nodes: {exc}", pytrace=False)
    try:
        yield nodes
    finally:
        for inst in nodes.values():
            finish_asterisk(inst)


class NodeAri(AriObserver):
    """The node's Stasis app (``instance.app_name``) with REST calls. Subscribed to every
    event, so it also sees channels only the dialplan handles: the trunk's inbound
    calls, and ``ChannelDialplan`` for each application they run."""

    def __init__(self, instance: AsteriskInstance) -> None:
        super().__init__(instance, app=instance.app_name)

    async def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method /ari<path>``; the decoded JSON answer (None when empty). Asserts a
        2xx status: a test's request that fails is the test's failure."""
        assert self._session is not None, "start() first"
        url = f"{self.instance.ari_url}/ari{path}"
        async with self._session.request(method, url, **kwargs) as resp:
            text = await resp.text()
            assert resp.status < 300, f"{method} {path}: {resp.status} {text}"
            return json.loads(text) if text else None

    async def originate(
        self, endpoint: str, variables: Mapping[str, str] | None = None, **params: str
    ) -> Event:
        """A channel to ``endpoint`` that enters this app when answered; ``params`` are
        the originate's other query parameters (callerId, timeout, appArgs ...),
        ``variables`` the channel's (``PJSIP_HEADER(add,X-...)`` adds a SIP header)."""
        ch: Event = await self.rest(
            "POST", "/channels",
            params={"endpoint": endpoint, "app": self.app, **params},
            json={"variables": dict(variables or {})},
        )  # fmt: skip
        return ch

    def dialplan_apps(self, cid: str) -> list[tuple[str, str]]:
        """(application, its data) each dialplan step of channel ``cid`` ran, so far."""
        return [
            (str(e.get("dialplan_app")), str(e.get("dialplan_app_data")))
            for e in self.events
            if e.get("type") == "ChannelDialplan" and channel_id(e) == cid
        ]


def write_node_config(nodes: Mapping[str, AsteriskInstance], directory: Path, queue: str,
                      agents: Mapping[str, Mapping[str, Any]], **top: Any) -> Path:
    """The service's config for ``nodes`` (``asterisk:``, each node's trunk as the others
    dial it): queue ``queue`` (DID: its digits) with test timings and no offers (callers
    just wait), ``agents``, ``top``-level extras. Returns the file."""
    names = list(nodes)
    write_test_config(
        directory, ari={},
        # One chroot holds every node's files: the first node's prompts serve them all.
        asterisk_dir=nodes[names[0]].prompts_dir,
        queues={queue: {"did": queue.lstrip("q"), "caller_id": "5550100", "max_waiting": 20,
                        "first_offer_after": "60s", "repeat_offer_every": "60s",
                        "ring_timeout": "8s", "preview_timeout": "10s",
                        "retry_interval": "2s", "wrap_up": "0s"}},
        agents=agents,
        asterisk={name: {"url": inst.ari_url, "user": inst.ari_user,
                         "password": inst.ari_password, "app": inst.app_name,
                         "trunk": inst.trunk_dial(next(p for p in names if p != name))}
                  for name, inst in nodes.items()},
        **top,
    )
    return directory / "config.yaml"
