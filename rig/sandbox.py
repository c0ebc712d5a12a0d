"""Run a real Asterisk 22 in a chroot, for tests and the README quick start.

``provision()`` builds (once) a Debian sid root filesystem with Asterisk 22 and its
sounds; ``start()`` runs one Asterisk instance from it with its own directories
(``<rootfs>/ivr-runs/<runid>/``), its own ports, RTP range and ARI credentials, so
several instances can run side by side from one rootfs.

The configuration is the operator's ``asterisk-config/`` laid over Debian's defaults,
then a COPY is changed with explicit substitutions that fail loudly when the expected
line is missing (so the repository files stay directly deployable):

* ports: SIP (UDP, 127.0.0.1), HTTP/ARI (127.0.0.1), an RTP range of its own;
* the carrier trunk points at ``carrier_host:carrier_port`` and is identified by the
  bare ``carrier_host`` address. Agents live on 127.0.0.1 and callers/carrier on
  127.0.0.2, so SIP callers must send from ``carrier_host`` to be seen as the carrier;
* ARI credentials (``ari_users.conf``) and the app name in ``Stasis(...)``;
* agents ``agent1..agentN`` with a static contact ``sip:agentN@127.0.0.1:<port>``
  (``qualify_frequency=0``) and one ``regagent`` that registers with a password;
* with ``test_dids``: ``exten => _7XXX,1,Stasis(<app>,q${EXTEN})`` in ``from-carrier``,
  so each test can dial its own DID 7xxx and land in queue ``q7xxx``;
* as a node of several (``node_name``, ``peers``; ``start_nodes()`` starts a set of them
  that know each other): ``pjsip_nodes.conf`` as an operator writes it from
  ``pjsip_nodes.conf.example``, one trunk endpoint ``node-<peer>`` per peer node
  (identified by the From user ``node-<self>``, authenticated with a password the
  nodes share), so an agent of node b is dialled from node a as
  ``PJSIP/<agent>@node-b`` (``AsteriskInstance.trunk_dial``).

Stdlib only: it runs before the project's dependencies are installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("IVR_ASTERISK_CACHE", "/var/cache/ivr"))
ROOTFS_NAME = "asterisk-rootfs"
RUNS_DIR = "ivr-runs"
DEFAULT_AGENTS: tuple[str, ...] = tuple(f"agent{i}" for i in range(1, 7))
RTP_PORTS_PER_RUN = 200
# The quick start's caller softphone presents this (a fictional, valid US number).
DEMO_CALLER_NUMBER = "2015550123"
START_TIMEOUT = 60.0

MMDEBSTRAP_PACKAGES = "asterisk,asterisk-core-sounds-en,asterisk-moh-opsound-wav"


class SandboxError(RuntimeError):
    """Provisioning or running the sandboxed Asterisk failed."""


#: a node's name: as the IVR's config accepts it (asterisk.nodes), fit for an endpoint name
NODE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def node_endpoint(name: str) -> str:
    """The trunk endpoint (and aor, auth) every other node has for node ``name``, and
    the From user that node sends (asterisk-config/pjsip_nodes.conf.example)."""
    return f"node-{name}"


def _pair_user(x: str, y: str) -> str:
    # Both nodes of a pair must derive the same auth username: order-independent.
    lo, hi = sorted((x, y))
    return f"nodes-{lo}-{hi}"


# ------------------------------------------------------------------ provisioning


def provision(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return a rootfs with Asterisk 22, building it with mmdebstrap if missing.

    Idempotent: an existing ``<cache>/asterisk-rootfs`` with /usr/sbin/asterisk is
    reused. The build goes to ``asterisk-rootfs.tmp`` and is renamed when complete, so
    an interrupted build is never mistaken for a finished one.
    """
    rootfs = cache_dir / ROOTFS_NAME
    if not (rootfs / "usr/sbin/asterisk").exists():
        if os.geteuid() != 0:
            raise SandboxError("provisioning the Asterisk rootfs needs root (mmdebstrap, chroot)")
        if shutil.which("mmdebstrap") is None:
            raise SandboxError("mmdebstrap is not installed (apt-get install mmdebstrap)")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f"{ROOTFS_NAME}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        cmd = [
            "mmdebstrap",
            "--variant=apt",
            '--aptopt=Acquire::Check-Valid-Until "false"',
            f"--include={MMDEBSTRAP_PACKAGES}",
            "sid",
            str(tmp),
            # No mirror argument: mmdebstrap's default source for the suite works here
            # (and honours the machine's apt configuration, e.g. a local mirror).
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not (tmp / "usr/sbin/asterisk").exists():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise SandboxError(f"mmdebstrap failed (rc={proc.returncode}):\n{tail}")
        if rootfs.exists():
            shutil.rmtree(rootfs)
        tmp.rename(rootfs)
    # Without a hosts file naming the host, every call makes failing DNS lookups.
    hosts = rootfs / "etc/hosts"
    wanted = f"127.0.0.1 localhost {socket.gethostname()}\n"
    if not hosts.exists() or hosts.read_text() != wanted:
        hosts.write_text(wanted)
    return rootfs


# ------------------------------------------------------------------ processes


def stop_process_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), then
    SIGKILL after ``timeout``; reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM this child when the process that started it dies.

    Linux only (prctl PR_SET_PDEATHSIG, kept across exec). A test run killed with
    kill -9 then leaves no Asterisk or sipp behind. Not used for ``up``, which starts
    Asterisk detached on purpose.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def die_with_parent_preexec() -> Callable[[], None] | None:
    """``die_with_parent`` when called from the main thread, else None.

    The kernel sends the death signal when the *thread* that forked exits: a child
    started from a worker thread (``asyncio.to_thread``) would be killed when that
    thread is retired, long before the test ends.
    """
    return die_with_parent if threading.current_thread() is threading.main_thread() else None


# ------------------------------------------------------------------ ports

_handed_out: set[int] = set()


def _bindable(kind: int, host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, udp: bool = True) -> int:
    """A port free right now on ``host`` (UDP or TCP), never handed out twice here."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        # Also free on TCP/UDP 0.0.0.0 so nothing bound to any address shadows it.
        if port not in _handed_out and _bindable(kind, "0.0.0.0", port):
            _handed_out.add(port)
            return port
    raise SandboxError("no free port found")


_handed_out_media: set[int] = set()


def media_port(host: str, low: int = 33000) -> int:
    """A port p with p..p+3 free on ``host`` for a sipp peer's media (sipp takes p and
    p+2), at or above ``low`` (above Asterisk's RTP ranges), never handed out twice."""
    for _ in range(500):
        p = random.randrange(low, 60000, 4)
        ports = range(p, p + 4)
        if any(q in _handed_out_media for q in ports):
            continue
        if all(_bindable(socket.SOCK_DGRAM, host, q) for q in ports):
            _handed_out_media.update(ports)
            return p
    raise SandboxError("no free media port")


def _free_rtp_range(count: int = RTP_PORTS_PER_RUN) -> tuple[int, int]:
    """An even-aligned UDP range below the kernel's ephemeral ports (32768+).

    Ephemeral ports are what ``free_port`` and sipp get; keeping RTP below them
    avoids clashes between Asterisk's media and test peers.
    """
    for _ in range(200):
        start = random.randrange(10000, 32000 - count, 2)
        ports = range(start, start + count)
        if any(p in _handed_out for p in ports):
            continue
        if all(_bindable(socket.SOCK_DGRAM, "0.0.0.0", p) for p in ports):
            _handed_out.update(ports)
            return start, start + count - 1
    raise SandboxError("no free RTP range found")


def release_rtp_range(start: int, end: int) -> None:
    """Give an RTP range back once its instance is removed (a long run of many
    instances, e.g. the load benchmark, would otherwise run out of ranges)."""
    _handed_out.difference_update(range(start, end + 1))


# ------------------------------------------------------------------ instance


@dataclass
class AsteriskInstance:
    """One running (or stopped) Asterisk in the chroot. Paths ``*_in_chroot`` are as
    Asterisk sees them; ``run_dir`` is the host path."""

    rootfs: Path
    run_id: str
    run_dir: Path
    run_dir_in_chroot: str
    sip_port: int
    http_port: int
    rtp_start: int
    rtp_end: int
    ari_url: str
    ari_user: str
    ari_password: str
    app_name: str
    carrier_host: str
    carrier_port: int
    agent_ports: dict[str, int]
    reg_user: str
    reg_password: str
    prompts_dir: str
    test_dids: bool
    sip_bind: str = "127.0.0.1"
    #: quick start only: a registering account (context from-carrier) to play the caller,
    #: presenting DEMO_CALLER_NUMBER
    caller_password: str = ""
    #: as one node of several (``start_nodes``): its name, "" when it stands alone
    node_name: str = ""
    #: the other nodes it has a trunk to: name -> (SIP host, SIP port)
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: the password every trunk between the nodes of one ``start_nodes`` shares
    trunk_password: str = ""
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    # -- paths
    @property
    def conf_in_chroot(self) -> str:
        return f"{self.run_dir_in_chroot}/etc/asterisk.conf"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "log" / "console.log"

    @property
    def messages_log(self) -> Path:
        return self.run_dir / "log" / "messages.log"

    @property
    def sip_uri_host(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def trunk_dial(self, peer: str) -> str:
        """Dial string template with which node ``peer`` rings an agent of THIS node:
        ``PJSIP/{agent}@node-<this node>`` (``{agent}``: the agent's endpoint name here),
        what the IVR's config calls this node's ``trunk``. ``peer`` must be one of this
        node's peers: only they are let in by the trunk."""
        if not self.node_name:
            raise SandboxError(f"instance {self.run_id} is not a node (start_nodes)")
        if peer not in self.peers:
            raise SandboxError(
                f"node {self.node_name!r} has no trunk from {peer!r}; peers: {sorted(self.peers)}"
            )
        return f"PJSIP/{{agent}}@{node_endpoint(self.node_name)}"

    def auth_header(self) -> str:
        """``Authorization`` header value for ARI (basic auth, never ``?api_key=``)."""
        raw = f"{self.ari_user}:{self.ari_password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    # -- lifecycle
    def launch(self, timeout: float = START_TIMEOUT, *, detached: bool = False) -> None:
        """Start Asterisk with this run's config and wait until ARI answers 200.

        Unless ``detached``, Asterisk is SIGTERMed if this process dies.
        """
        if self.running():
            raise SandboxError(f"instance {self.run_id} is already running")
        # A stale control socket makes `asterisk -r` talk to nobody.
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "run" / "asterisk.ctl").unlink()
        (self.run_dir / "log").mkdir(parents=True, exist_ok=True)
        with self.console_log.open("ab") as out:
            out.write(f"\n==== start {time.strftime('%F %T')} ====\n".encode())
            out.flush()
            # No `-U root`: that fails with "ASTdb initialization failed" in a chroot.
            self._proc = subprocess.Popen(
                ["chroot", str(self.rootfs), "asterisk", "-f", "-C", self.conf_in_chroot],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if detached else die_with_parent_preexec(),
            )
        self.pid = self._proc.pid
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        url = f"{self.ari_url}/ari/asterisk/info"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise SandboxError(
                    f"Asterisk exited with code {self._proc.returncode} during start-up; "
                    f"log tail:\n{self.log_tail(40)}"
                )
            req = urllib.request.Request(url, headers={"Authorization": self.auth_header()})
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                # ARI answers 503 for a moment after HTTP is up: wait for a 200.
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise SandboxError(
            f"ARI at {url} not ready after {timeout:.0f}s (last: {last}); "
            f"log tail:\n{self.log_tail(40)}"
        )

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL; wait for it."""
        if self._proc is not None:
            stop_process_group(self._proc, timeout)
            self._proc = None
            self.pid = None
            return
        if self.pid is not None:  # started by another process (`up` / `down`)
            pid = self.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.running():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            self.pid = None

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again with the same ports, credentials, config and astdb."""
        self.stop()
        self.launch(timeout)

    def remove(self) -> None:
        """Stop and delete the run directory."""
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- inspection
    def cli(self, command: str, timeout: float = 30.0) -> str:
        """Run an Asterisk CLI command (``asterisk -rx``) and return its output."""
        proc = subprocess.run(
            ["chroot", str(self.rootfs), "asterisk", "-C", self.conf_in_chroot, "-rx", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            raise SandboxError(f"asterisk -rx {command!r} failed: {proc.stderr or proc.stdout}")
        return proc.stdout

    def log_tail(self, n: int = 50) -> str:
        """Last ``n`` lines of the console output and of messages.log."""
        parts = []
        for path in (self.console_log, self.messages_log):
            try:
                lines = path.read_text(errors="replace").splitlines()[-n:]
            except FileNotFoundError:
                continue
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- persistence for the CLI
    def to_json(self) -> dict[str, object]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_proc"}
        data["agent_ports"] = dict(self.agent_ports)
        data["peers"] = {name: [host, port] for name, (host, port) in self.peers.items()}
        data["rootfs"] = str(self.rootfs)
        data["run_dir"] = str(self.run_dir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AsteriskInstance:
        d = dict(data)
        d.pop("_proc", None)
        d["rootfs"] = Path(str(d["rootfs"]))
        d["run_dir"] = Path(str(d["run_dir"]))
        peers = d.get("peers") or {}  # absent in state files written before nodes
        if not isinstance(peers, dict):
            raise SandboxError(f"peers: expected an object, got {peers!r}")
        d["peers"] = {str(k): (str(v[0]), int(v[1])) for k, v in peers.items()}
        return cls(**d)  # type: ignore[arg-type]


# ------------------------------------------------------------------ config rendering


def _sub(text: str, old: str, new: str, name: str) -> str:
    """Replace exactly one ``old``; fail loudly if the operator file changed shape."""
    count = text.count(old)
    if count != 1:
        raise SandboxError(
            f"{name}: expected exactly one {old!r} to override, found {count}; "
            "update ivr/sandbox.py together with asterisk-config/"
        )
    return text.replace(old, new)


def _edit(path: Path, *subs: tuple[str, str], append: str = "") -> None:
    text = path.read_text()
    for old, new in subs:
        text = _sub(text, old, new, path.name)
    path.write_text(text + append)


def _render(inst: AsteriskInstance, config_src: Path, agents: Sequence[str]) -> None:
    run = inst.run_dir
    run_c = inst.run_dir_in_chroot
    etc = run / "etc"
    # Operators deploy asterisk-config/ over Debian's /etc/asterisk: do the same.
    shutil.copytree(inst.rootfs / "etc/asterisk", etc, dirs_exist_ok=True)
    for src in config_src.iterdir():
        if src.is_file() and src.suffix == ".conf":
            shutil.copy2(src, etc / src.name)

    dirs = {
        "astetcdir": f"{run_c}/etc",
        "astvarlibdir": f"{run_c}/lib",
        "astdbdir": f"{run_c}/lib",
        "astspooldir": f"{run_c}/spool",
        "astrundir": f"{run_c}/run",
        "astlogdir": f"{run_c}/log",
        "astcachedir": f"{run_c}/cache",
        "astmoddir": "/usr/lib/x86_64-linux-gnu/asterisk/modules",
        "astkeydir": f"{run_c}/lib",
        "astdatadir": "/usr/share/asterisk",
        "astagidir": "/usr/share/asterisk/agi-bin",
        "astsbindir": "/usr/sbin",
    }
    for sub in ("lib", "lib/keys", "spool", "run", "log", "log/cdr-csv", "cache"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    lines = ["[directories]", *(f"{k} => {v}" for k, v in dirs.items())]
    # The system name prefixes channels' unique ids: nodes started in the same second
    # would otherwise hand out the same ones.
    system = f"ivr-sandbox-{inst.node_name}" if inst.node_name else "ivr-sandbox"
    lines += ["", "[options]", "documentation_language = en_US", f"systemname = {system}"]
    (etc / "asterisk.conf").write_text("\n".join(lines) + "\n")

    _edit(etc / "http.conf", ("bindport = 8088", f"bindport = {inst.http_port}"))
    _edit(
        etc / "rtp.conf",
        ("rtpstart = 10000", f"rtpstart = {inst.rtp_start}"),
        ("rtpend = 20000", f"rtpend = {inst.rtp_end}"),
    )
    (etc / "ari_users.conf").write_text(
        f"[{inst.ari_user}]\ntype = user\nread_only = no\npassword = {inst.ari_password}\n"
    )
    # On loopback, pin RTP to 127.0.0.1 (else media goes to the host's other address).
    # Bound to all addresses (softphones on other hosts), Asterisk chooses, as for an
    # operator: pinned, the phones would ring and register but hear nothing.
    media = ("media_address = 127.0.0.1\nbind_rtp_to_media_address = yes\n"
             if inst.sip_bind.startswith("127.") else "")
    _edit(
        etc / "pjsip.conf",
        ("bind = 0.0.0.0:5060", f"bind = {inst.sip_bind}:{inst.sip_port}"),
        (
            "contact = sip:192.0.2.10:5060\nqualify_frequency = 60",
            f"contact = sip:{inst.carrier_host}:{inst.carrier_port}\nqualify_frequency = 0",
        ),
        ("match = 192.0.2.10", f"match = {inst.carrier_host}"),
        ("rtp_symmetric = yes\naors = carrier\n", "rtp_symmetric = yes\naors = carrier\n" + media),
        ("device_state_busy_at = 1\n", "device_state_busy_at = 1\n" + media),
    )
    agent_blocks = []
    for name in agents:
        port = inst.agent_ports[name]
        agent_blocks.append(
            f"[{name}](agent-endpoint)\naors = {name}\n\n"
            f"[{name}](agent-aor)\ncontact = sip:{name}@127.0.0.1:{port}\n"
            "qualify_frequency = 0\n"
        )
    agent_blocks.append(
        f"[{inst.reg_user}](agent-endpoint)\nauth = {inst.reg_user}\naors = {inst.reg_user}\n\n"
        f"[{inst.reg_user}](agent-auth)\nusername = {inst.reg_user}\n"
        f"password = {inst.reg_password}\n\n"
        f"[{inst.reg_user}](agent-aor)\nqualify_frequency = 0\n"
    )
    if inst.caller_password:
        # Quick start: a softphone account that dials in like the carrier does. It
        # presents a valid US number (fictional 201-555-01xx range), as a carrier
        # would, whatever the softphone puts in From: the service offers callbacks
        # only to valid numbers of the queue's region, and "caller" is none.
        agent_blocks.append(
            "[caller](agent-endpoint)\ncontext = from-carrier\nauth = caller\naors = caller\n"
            f"callerid = \"Demo caller\" <{DEMO_CALLER_NUMBER}>\n\n"
            f"[caller](agent-auth)\nusername = caller\npassword = {inst.caller_password}\n\n"
            "[caller](agent-aor)\nqualify_frequency = 0\n"
        )
    (etc / "pjsip_agents.conf").write_text("\n".join(agent_blocks))
    if inst.node_name:
        (etc / "pjsip_nodes.conf").write_text(_nodes_conf(inst, media))

    ext = etc / "extensions.conf"
    text = ext.read_text()
    if inst.app_name != "ivr":
        if "Stasis(ivr," not in text:
            raise SandboxError("extensions.conf: no Stasis(ivr,...) to rename")
        text = text.replace("Stasis(ivr,", f"Stasis({inst.app_name},")
    if inst.test_dids:
        text += (
            "\n; sandbox: test DIDs 7xxx -> queue q7xxx\n[from-carrier](+)\n"
            f"exten => _7XXX,1,Stasis({inst.app_name},q${{EXTEN}})\n same => n,Hangup()\n"
        )
    ext.write_text(text)


def _nodes_conf(inst: AsteriskInstance, media: str) -> str:
    """pjsip_nodes.conf as pjsip_nodes.conf.example shows an operator to write it."""
    blocks = [f"; rig/sandbox.py: node {inst.node_name!r} and its trunks to the other nodes\n"]
    for peer, (host, port) in sorted(inst.peers.items()):
        name = node_endpoint(peer)
        blocks.append(
            f"[{name}](node-trunk)\naors = {name}\nfrom_user = {node_endpoint(inst.node_name)}\n"
            f"auth = {name}\noutbound_auth = {name}\n{media}\n"
            f"[{name}](node-auth)\nusername = {_pair_user(inst.node_name, peer)}\n"
            f"password = {inst.trunk_password}\n\n"
            # Nodes start one after the other: a qualify OPTIONS to a peer not started yet
            # would mark it unavailable until the next one, 30 s later.
            f"[{name}](node-aor)\ncontact = sip:{host}:{port}\nqualify_frequency = 0\n"
        )
    return "\n".join(blocks)


def start(
    rootfs: Path,
    *,
    config_src: Path = Path("asterisk-config"),
    prompts_src: Path = Path("prompts"),
    app_name: str = "ivr",
    agents: Sequence[str] = DEFAULT_AGENTS,
    test_dids: bool = True,
    sip_port: int | None = None,
    sip_bind: str = "127.0.0.1",
    demo_caller: bool = False,
    http_port: int | None = None,
    carrier_host: str = "127.0.0.2",
    timeout: float = START_TIMEOUT,
    detached: bool = False,
    rtp_ports: int = RTP_PORTS_PER_RUN,
    node_name: str = "",
    peers: Mapping[str, tuple[str, int]] | None = None,
    trunk_password: str = "",
) -> AsteriskInstance:
    """Render a per-run config inside ``rootfs`` and start Asterisk on it.

    ``rtp_ports``: the size of this instance's RTP range (two ports per call); the
    default suits tests, a load run needs about twice its concurrent calls.

    ``node_name``, ``peers`` (name -> (SIP host, SIP port)), ``trunk_password``: start it
    as one node of several, with a trunk to each peer; every peer must be started with
    this node among its peers and the same ``trunk_password``. ``start_nodes`` does it
    all (the ports of every node must be known before the first one starts)."""
    peers = dict(peers or {})
    if node_name or peers:
        if not node_name:
            raise SandboxError("peers need a node_name: the From user the peers know it by")
        bad = [n for n in (node_name, *peers) if not NODE_NAME.fullmatch(n)]
        if bad:
            raise SandboxError(f"node names are lower-case letters, digits, _ -: not {bad}")
        if node_name in peers:
            raise SandboxError(f"node {node_name!r} cannot be its own peer")
        if peers and not trunk_password:
            raise SandboxError("a node with peers needs the trunk_password they share")
    if os.geteuid() != 0:
        raise SandboxError("running Asterisk in a chroot needs root")
    if not (rootfs / "usr/sbin/asterisk").exists():
        raise SandboxError(f"{rootfs} has no /usr/sbin/asterisk: run provision() first")
    if not (config_src / "pjsip.conf").exists():
        raise SandboxError(f"{config_src.resolve()} does not look like asterisk-config/")
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    run_c = f"/{RUNS_DIR}/{run_id}"
    run_dir = rootfs / RUNS_DIR / run_id
    run_dir.mkdir(parents=True)
    http = http_port if http_port is not None else free_port(udp=False)
    rtp_start, rtp_end = _free_rtp_range(rtp_ports)
    inst = AsteriskInstance(
        rootfs=rootfs,
        run_id=run_id,
        run_dir=run_dir,
        run_dir_in_chroot=run_c,
        sip_port=sip_port if sip_port is not None else free_port(),
        http_port=http,
        rtp_start=rtp_start,
        rtp_end=rtp_end,
        ari_url=f"http://127.0.0.1:{http}",
        ari_user=f"ivr-{secrets.token_hex(4)}",
        ari_password=secrets.token_hex(16),
        app_name=app_name,
        carrier_host=carrier_host,
        carrier_port=free_port(carrier_host),
        agent_ports={a: free_port() for a in agents},
        reg_user="regagent",
        reg_password=secrets.token_hex(12),
        sip_bind=sip_bind,
        caller_password=secrets.token_hex(12) if demo_caller else "",
        prompts_dir=f"{run_c}/prompts",
        test_dids=test_dids,
        node_name=node_name,
        peers=peers,
        trunk_password=trunk_password if peers else "",
    )
    try:
        _render(inst, config_src, agents)
        (run_dir / "prompts").mkdir()
        if prompts_src.is_dir():
            shutil.copytree(prompts_src, run_dir / "prompts", dirs_exist_ok=True)
        inst.launch(timeout, detached=detached)
    except BaseException:
        inst.stop()
        raise
    return inst


def start_nodes(
    rootfs: Path,
    agents: Mapping[str, Sequence[str]],
    *,
    config_src: Path = Path("asterisk-config"),
    prompts_src: Path = Path("prompts"),
    app_name: str = "ivr",
    test_dids: bool = True,
    timeout: float = START_TIMEOUT,
    rtp_ports: int = RTP_PORTS_PER_RUN,
) -> dict[str, AsteriskInstance]:
    """Start one node per key of ``agents`` (node name -> its agents' endpoint names),
    each with a trunk to every other one: the way an operator runs several Asterisk
    nodes behind one IVR. All on 127.0.0.1, each with its own SIP and ARI ports, ARI
    credentials and RTP range; they share the Stasis app name (the IVR requires it) and
    one trunk password. If one fails to start, those already started are stopped."""
    if len(agents) < 2:
        raise SandboxError("start_nodes needs at least two nodes")
    # Every node's config names its peers' SIP ports: take them all before any start.
    sip_ports = {name: free_port() for name in agents}
    password = secrets.token_hex(16)
    started: dict[str, AsteriskInstance] = {}
    try:
        for name, node_agents in agents.items():
            started[name] = start(
                rootfs,
                config_src=config_src,
                prompts_src=prompts_src,
                app_name=app_name,
                agents=node_agents,
                test_dids=test_dids,
                sip_port=sip_ports[name],
                timeout=timeout,
                rtp_ports=rtp_ports,
                node_name=name,
                peers={p: ("127.0.0.1", port) for p, port in sip_ports.items() if p != name},
                trunk_password=password,
            )
    except BaseException:
        for inst in started.values():
            inst.stop()
        raise
    return started


# ------------------------------------------------------------------ CLI

STATE_FILE = "asterisk.json"


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rig.sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_prov = sub.add_parser("provision", help="build (or reuse) the Asterisk rootfs")
    p_prov.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p_up = sub.add_parser("up", help="start an Asterisk in the background")
    p_up.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p_up.add_argument("--config-src", type=Path, default=Path("asterisk-config"))
    p_up.add_argument("--prompts-src", type=Path, default=Path("prompts"))
    p_up.add_argument("--app-name", default="ivr")
    p_up.add_argument("--sip-port", type=int)
    p_up.add_argument("--http-port", type=int)
    p_up.add_argument("--sip-bind", default="127.0.0.1",
                      help="SIP address (0.0.0.0 lets softphones on other hosts in)")
    p_up.add_argument("--demo-caller", action="store_true",
                      help="add a registering 'caller' account that can dial the DIDs")
    p_up.add_argument("--state-dir", type=Path, default=Path(".sandbox"))
    p_down = sub.add_parser("down", help="stop the Asterisk started by `up`")
    p_down.add_argument("--state-dir", type=Path, default=Path(".sandbox"))
    p_down.add_argument("--remove", action="store_true", help="also delete its run dir")
    p_status = sub.add_parser("status", help="exit 0 when the Asterisk of `up` runs")
    p_status.add_argument("--state-dir", type=Path, default=Path(".sandbox"))
    args = parser.parse_args(argv)

    try:
        if args.cmd == "provision":
            print(provision(args.cache_dir))
        elif args.cmd == "up":
            state = args.state_dir / STATE_FILE
            if state.exists() and state.stat().st_size:
                old = AsteriskInstance.from_json(json.loads(state.read_text()))
                if old.running():
                    print(f"already running (pid {old.pid}); see {state}", file=sys.stderr)
                    return 1
            inst = start(
                provision(args.cache_dir),
                config_src=args.config_src,
                prompts_src=args.prompts_src,
                app_name=args.app_name,
                sip_port=args.sip_port,
                http_port=args.http_port,
                sip_bind=args.sip_bind,
                demo_caller=args.demo_caller,
                detached=True,
            )
            try:
                args.state_dir.mkdir(parents=True, exist_ok=True)
                state.touch(mode=0o600)
                state.write_text(json.dumps(inst.to_json(), indent=2) + "\n")
            except BaseException:
                inst.stop()
                raise
            proc, inst._proc = inst._proc, None
            if proc is not None:
                # Detached on purpose: `down` stops it by pid. Mark the handle done so
                # Popen.__del__ does not warn about a child still running.
                proc.returncode = 0
            print(
                f"Asterisk up: ARI {inst.ari_url} (app {inst.app_name!r}), "
                f"SIP udp 127.0.0.1:{inst.sip_port}"
            )
            print(f"credentials and details: {state.resolve()}")
        elif args.cmd == "status":
            state = args.state_dir / STATE_FILE
            if not state.exists() or not state.stat().st_size:
                return 1
            inst = AsteriskInstance.from_json(json.loads(state.read_text()))
            print(f"running (pid {inst.pid})" if inst.running() else "stopped")
            return 0 if inst.running() else 1
        elif args.cmd == "down":
            state = args.state_dir / STATE_FILE
            if not state.exists():
                print(f"no {state}", file=sys.stderr)
                return 1
            inst = AsteriskInstance.from_json(json.loads(state.read_text()))
            if args.remove:
                inst.remove()
            else:
                inst.stop()
            state.unlink()
            print(f"Asterisk {inst.run_id} stopped")
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
