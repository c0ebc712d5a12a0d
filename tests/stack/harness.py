"""The compose stack under test: how it is brought up (``launch``), reached (HTTP API,
``docker compose exec``) and called (``StackCaller``: the sipp caller of ``tests/peers``
aimed at the stack's published SIP port).

Addresses: the stack is told (``SIP_EXTERNAL_ADDRESS``) that softphones and the carrier
reach it on this host's own network address, and that address is the carrier
(``CARRIER_ADDRESS``). sipp sends from and to that address, never 127.0.0.1: Docker takes
loopback traffic through its userland proxy, so Asterisk would see the bridge's gateway,
not the carrier. Asterisk announces that address and its published RTP ports in SDP, as it
does to softphones on a LAN.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rig.sandbox import AsteriskInstance, free_port
from rig.stack import REPO, Engine, Project, StackError, free_udp_range, host_address
from tests.peers import SipCaller
from tests.support import api

#: the images the stack test builds (its own tag: an operator's ``latest`` is never touched)
IMAGE_TAG = "stacktest"
#: 10 calls' worth of RTP ports
RTP_PORTS = 20
#: the queue the test calls (docker/ivr/config.yaml) and its DID
QUEUE = "support"
DID = "5550100"


@dataclass
class Stack:
    """A running stack: its compose project and what the host sees of it."""

    engine: Engine
    project: Project
    host: str
    sip_port: int
    carrier_port: int
    http_port: int
    rtp: tuple[int, int]
    api_token: str
    env_file: Path

    # -- HTTP API of the service (published port)
    def get(self, path: str, *, auth: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}")
        if auth:
            req.add_header("Authorization", f"Bearer {self.api_token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def api(self, path: str) -> Any:
        status, body = self.get(path)
        if status != 200:
            raise StackError(f"GET {path}: HTTP {status}: {body[:300]}")
        return json.loads(body)

    def line(self, queue: str = QUEUE) -> list[dict[str, Any]]:
        """The queue's items in order, from ``GET /api/queues``."""
        return list(api.queue(self.api("/api/queues"), queue)["items"])

    def event_count(self, event: str) -> float:
        """``ivr_events_total{event=...}`` from ``/metrics`` (summed over other labels)."""
        status, body = self.get("/metrics")
        if status != 200:
            raise StackError(f"GET /metrics: HTTP {status}")
        return api.metric(body, "ivr_events_total", event=event) or 0.0

    def console_login(self, login: str, password: str) -> Any:
        """``POST /api/login`` as a console would; the answer (role, CSRF token)."""
        req = urllib.request.Request(
            f"http://{self.host}:{self.http_port}/api/login", method="POST",
            data=json.dumps({"login": login, "password": password}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def env(self, name: str) -> str:
        """A value of the stack's generated ``.env``."""
        for line in self.env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return value
        raise StackError(f"{name} not in {self.env_file}")

    # -- inside the containers
    def exec(self, service: str, *cmd: str, timeout: float = 30.0) -> str:
        return self.project.compose("exec", "-T", service, *cmd, timeout=timeout).stdout

    def asterisk_cli(self, command: str) -> str:
        return self.exec("asterisk", "asterisk", "-rx", command)

    def store_items(self) -> list[dict[str, Any]]:
        """The ``items`` rows of the SQLite store, read inside the service's container from
        the volume (read-only connection; the store is in WAL mode)."""
        script = (
            "import json, sqlite3\n"
            "db = sqlite3.connect('file:/var/lib/ivr/ivr.sqlite3?mode=ro', uri=True)\n"
            "db.row_factory = sqlite3.Row\n"
            "rows = db.execute('SELECT id, queue, kind, state, number FROM items"
            " ORDER BY arrived_at, seq').fetchall()\n"
            "print(json.dumps([dict(r) for r in rows]))\n"
        )
        return list(json.loads(self.exec("ivr", "python", "-c", script)))

    def logs(self, *services: str, tail: int = 80) -> str:
        return self.project.logs(*services, tail=tail)

    def describe(self) -> str:
        """Everything worth reading when a check failed."""
        ps = self.project.compose("ps", "-a", timeout=30, check=False).stdout
        return f"{ps}\n{self.logs()}"

    # -- SIP
    def peer_target(self) -> AsteriskInstance:
        """What ``tests/peers`` need to know of an Asterisk (its SIP port, and the carrier's
        address), for the containerised one; the chroot-only fields are unused."""
        nowhere = Path("/nonexistent")
        return AsteriskInstance(
            rootfs=nowhere, run_id="compose", run_dir=nowhere, run_dir_in_chroot="",
            sip_port=self.sip_port, http_port=0, rtp_start=self.rtp[0], rtp_end=self.rtp[1],
            ari_url="", ari_user="", ari_password="", app_name="ivr",
            carrier_host=self.host, carrier_port=self.carrier_port, agent_ports={},
            reg_user="", reg_password="", prompts_dir="", test_dids=False,
        )

    def caller(self, did: str = DID, **kwargs: Any) -> StackCaller:
        return StackCaller(self, did, **kwargs)


class StackCaller(SipCaller):
    """``SipCaller`` (one customer calling ``did`` through the carrier trunk) sent to the
    stack's published SIP port on the host's address (see the module doc)."""

    def __init__(self, stack: Stack, did: str, **kwargs: Any) -> None:
        super().__init__(stack.peer_target(), did, **kwargs)
        self.target = f"{stack.host}:{stack.sip_port}"

    @property
    def running(self) -> bool:
        """sipp still runs: the call is not over."""
        return self._sipp.returncode is None


# ------------------------------------------------------------------ parsing


# ------------------------------------------------------------------ bringing it up


def extra_ca() -> str:
    """CA certificates this host added itself (Debian: /usr/local/share/ca-certificates),
    e.g. an HTTPS-intercepting proxy's: the service image's build stage needs them for
    pip. Empty on an ordinary host."""
    root = Path("/usr/local/share/ca-certificates")
    pems = [p.read_text().strip() for p in sorted(root.rglob("*.crt"))] if root.is_dir() else []
    return "\n".join(pems)


def write_test_config(path: Path) -> Path:
    """docker/ivr/config.yaml with the tested queue's timings shortened (the offer after
    2 s instead of 30 s; overflow from the second waiting caller), mounted through
    IVR_CONFIG as an operator mounts their own."""
    cfg = yaml.safe_load((REPO / "docker/ivr/config.yaml").read_text())
    cfg["queues"][QUEUE].update(
        {"first_offer_after": "2s", "repeat_offer_every": "60s", "max_waiting": 1,
         "max_ewt": "2m"}
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o644)  # read by the container's unprivileged user
    return path


def write_env(path: Path, values: Mapping[str, str]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for key, value in values.items():
            f.write(f'{key}="{value}"\n' if "\n" in value else f"{key}={value}\n")
    return path


@contextmanager
def launch(engine: Engine, work: Path) -> Iterator[Stack]:
    """Build the images and ``docker compose up -d --wait`` a stack on free ports with
    generated secrets; ``down -v`` afterwards, whatever happened."""
    host = host_address()
    sip_port = free_port(host)
    carrier_port = free_port(host)
    http_port = free_port(udp=False)
    rtp = free_udp_range(RTP_PORTS)
    forbidden = {5060, 8088, 5038} & {sip_port, carrier_port, http_port, *range(rtp[0], rtp[1] + 1)}
    assert not forbidden, f"test ports must never be {forbidden}"
    token = secrets.token_hex(16)
    env = {
        "SIP_EXTERNAL_ADDRESS": host,
        "SIP_PORT": str(sip_port),
        "RTP_PORT_START": str(rtp[0]),
        "RTP_PORT_END": str(rtp[1]),
        "CARRIER_ADDRESS": host,
        "CARRIER_PORT": str(carrier_port),
        "IVR_ARI_USER": f"ivr-{secrets.token_hex(3)}",
        "IVR_ARI_PASSWORD": secrets.token_hex(16),
        "IVR_HTTP_PORT": str(http_port),
        "IVR_API_TOKEN": token,
        "IVR_PASSWORD_ALICE": secrets.token_hex(12),
        "IVR_PASSWORD_BOB": secrets.token_hex(12),
        "IVR_PASSWORD_SUPERVISOR": secrets.token_hex(12),
        "SIP_PASSWORD_ALICE": secrets.token_hex(12),
        "SIP_PASSWORD_BOB": secrets.token_hex(12),
        "IVR_CONFIG": str(write_test_config(work / "config.yaml")),
        "IVR_IMAGE_TAG": IMAGE_TAG,
        "HEALTHCHECK_INTERVAL": "1s",
        "IVR_BUILD_EXTRA_CA": extra_ca(),
    }
    env_file = write_env(work / "stack.env", env)
    project = Project(engine, f"ivrtest{secrets.token_hex(3)}", env_file)
    stack = Stack(engine, project, host, sip_port, carrier_port, http_port, rtp, token, env_file)
    try:
        project.compose("build", timeout=1500)
        try:
            project.compose("up", "-d", "--wait", timeout=300)
        except StackError as exc:
            raise StackError(f"{exc}\n{stack.describe()}") from None
        yield stack
    finally:
        try:
            project.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=120)
        finally:
            # Superseded builds' images (the tagged ones stay as the next run's cache).
            engine.docker("image", "prune", "-f", timeout=120, check=False)
