"""A private Docker engine and Compose v2 for the compose stack test (``tests/stack/``).

No registry and no system service: ``scripts/install-docker`` installs Debian's
``docker.io``, takes the Compose v2 plugin from Debian sid's ``docker-compose`` .deb and
makes the base-image tarballs; :meth:`Engine.start` then runs ``dockerd`` with

* its image and build cache under ``<cache>/docker`` (kept: a second run builds from
  cache), its runtime state (exec root, socket, pid file, log) in a fresh temp folder,
  and the daemon config of its own (the host's ``/etc/docker/daemon.json`` is not read);
* one such engine per host at a time (a lock file; a second run waits), stale
  containers of an interrupted run removed at start;

and ``import_base_images`` puts the tarballs under the exact ``FROM`` names
(``scripts/stack-images import``). :meth:`Engine.stop` removes every container, then stops
dockerd by its pid. ``docker``/``compose`` run the Debian client (``/usr/bin/docker``)
against this engine only (``DOCKER_HOST``, ``DOCKER_CONFIG``).

Stdlib only, like ``rig.sandbox``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from rig.sandbox import die_with_parent_preexec, stop_process_group

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("IVR_STACK_CACHE", "/var/cache/ivr/stack"))
DOCKERD = Path("/usr/sbin/dockerd")
#: Debian's client (docker.io); never whatever ``docker`` is first on PATH
DOCKER = Path("/usr/bin/docker")
COMPOSE_FILE = REPO / "docker-compose.yml"
INSTALL_HINT = "run: bash scripts/install-docker (as root)"
LOCK_FILE = Path("/run/lock/ivr-stack-engine.lock")


class StackError(RuntimeError):
    """The engine could not be provisioned, started or driven."""


def host_address() -> str:
    """This host's own non-loopback IPv4 address (the source of its default route): what
    a softphone or carrier on the network would reach, and what the containers can reach
    the host on. No packet is sent."""
    for probe in ("192.0.2.123", "10.255.255.255", "1.1.1.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            addr = str(s.getsockname()[0])
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    raise StackError("this host has no non-loopback IPv4 address for SIP and RTP")


def _run(
    cmd: Sequence[str | Path],
    env: Mapping[str, str],
    timeout: float,
    *,
    check: bool = True,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], env=dict(env), cwd=cwd, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(map(str, cmd))}: no result after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise StackError(f"{' '.join(map(str, cmd))} failed (rc={proc.returncode}):\n{tail}")
    return proc


class Engine:
    """One running private dockerd (see the module doc). Use :meth:`start`/:meth:`stop`."""

    def __init__(self, cache: Path, work: Path, lock: IO[str]) -> None:
        self.cache = cache
        self.work = work
        self.data_root = cache / "docker"
        self.socket = work / "docker.sock"
        self.log = work / "dockerd.log"
        # Nothing else from the caller's environment: compose lets it win over the env
        # file (an exported SIP_PORT=5060 would otherwise end up in a test stack).
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(cache / "docker-config"),
            # The classic builder (no buildx plugin here), the same on every engine.
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_BAKE": "false",
        }
        self._lock = lock
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle
    @classmethod
    def start(cls, cache: Path = DEFAULT_CACHE, timeout: float = 60.0,
              lock_wait: float = 900.0) -> Engine:
        """Start dockerd (FAILS with a hint when something is not provisioned). Another
        run's engine is waited for up to ``lock_wait`` seconds."""
        if os.geteuid() != 0:
            raise StackError("the compose stack test needs root (dockerd)")
        plugin = cache / "docker-config/cli-plugins/docker-compose"
        for need in (DOCKERD, DOCKER, plugin):
            if not os.access(need, os.X_OK):
                raise StackError(f"{need} is missing; {INSTALL_HINT}")
        cache.mkdir(parents=True, exist_ok=True)
        # One engine per host, whatever its cache: two dockerds would share the default
        # bridge and the iptables chains.
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_FILE.open("w")
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise StackError(f"another test run holds {LOCK_FILE} (its own "
                                     "dockerd) for too long") from None
                time.sleep(0.5)
        # Short path: unix socket paths are limited to 108 bytes.
        work = Path(tempfile.mkdtemp(prefix="ivr-stack-", dir="/tmp"))
        eng = cls(cache, work, lock)
        try:
            eng._launch(time.monotonic() + timeout)
            eng._remove_leftovers()
        except BaseException:
            eng.stop()
            raise
        return eng

    def _launch(self, deadline: float) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        config = self.work / "daemon.json"
        config.write_text(json.dumps({"log-level": "warn"}) + "\n")
        cmd = [
            str(DOCKERD),
            "--config-file", str(config),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.work / "exec"),
            "--pidfile", str(self.work / "dockerd.pid"),
            "-H", f"unix://{self.socket}",
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent_preexec(),
            )
        while True:
            if self._proc.poll() is not None:
                raise StackError(f"dockerd exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                probe = _run([DOCKER, "version", "--format", "{{.Server.Version}}"], self.env,
                             10, check=False)
                if probe.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise StackError(f"dockerd not ready in time:\n{self.log_tail()}")
            time.sleep(0.2)

    def _remove_leftovers(self) -> None:
        """Containers, networks and volumes of an interrupted earlier run (this engine is
        private: nothing in it belongs to anyone else). Images and build cache stay."""
        self._remove_containers()
        _run([DOCKER, "network", "prune", "-f"], self.env, 60)
        _run([DOCKER, "volume", "prune", "-f"], self.env, 60)

    def _remove_containers(self) -> None:
        ids = _run([DOCKER, "ps", "-aq"], self.env, 30).stdout.split()
        if ids:
            _run([DOCKER, "rm", "-f", "-v", *ids], self.env, 120, check=False)

    def stop(self, timeout: float = 60.0) -> None:
        """Remove every container, stop dockerd (SIGTERM, then SIGKILL), delete the
        runtime folder, release the lock. Safe to call twice."""
        try:
            if self._proc is not None and self._proc.poll() is None:
                with contextlib.suppress(StackError):
                    self._remove_containers()
                stop_process_group(self._proc, timeout)
            self._proc = None
            _unmount_below(self.work)
            shutil.rmtree(self.work, ignore_errors=True)
        finally:
            with contextlib.suppress(ValueError, OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no dockerd log)"

    # -- commands
    def docker(self, *args: str, timeout: float = 120.0,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([DOCKER, *args], self.env, timeout, check=check)

    def import_base_images(self, timeout: float = 600.0) -> None:
        """``FROM debian:sid-slim`` and ``FROM python:3.11-slim-bookworm`` without a
        registry (``scripts/stack-images import``: tarballs cached, imported once)."""
        env = {**self.env, "DOCKER": str(DOCKER), "IVR_STACK_CACHE": str(self.cache)}
        _run(["bash", REPO / "scripts/stack-images", "import"], env, timeout)


class Project:
    """``docker compose`` on the repository's docker-compose.yml with a project name and
    an env file of its own (so it can sit beside any other stack)."""

    def __init__(self, engine: Engine, name: str, env_file: Path,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.engine = engine
        self.name = name
        self.env_file = env_file
        #: variables that win over the env file (compose reads the process environment first)
        self.env = {**engine.env, **(extra_env or {})}

    def compose(self, *args: str, timeout: float = 300.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            [DOCKER, "compose", "-p", self.name, "--env-file", str(self.env_file),
             "-f", str(COMPOSE_FILE), "--project-directory", str(REPO), *args],
            self.env, timeout, check=check,
        )

    def container_id(self, service: str) -> str:
        out = self.compose("ps", "-aq", service, timeout=30).stdout.split()
        if len(out) != 1:
            raise StackError(f"{self.name}: expected one {service} container, found {out}")
        return out[0]

    def logs(self, *services: str, tail: int = 60) -> str:
        proc = self.compose("logs", "--no-color", "--tail", str(tail), *services,
                            timeout=60, check=False)
        return proc.stdout + proc.stderr


def _unmount_below(path: Path) -> None:
    """Lazily unmount whatever dockerd may have left mounted under ``path``."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(path) + "/"
    targets = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def free_udp_range(count: int) -> tuple[int, int]:
    """``count`` consecutive UDP ports, even start, free on every address right now, below
    the kernel's ephemeral range (where sipp and ``free_port`` take theirs)."""
    for _ in range(300):
        start = random.randrange(20000, 32000 - count, 2)
        ok = True
        for port in range(start, start + count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + count - 1
    raise StackError("no free UDP range found")


__all__ = [
    "DEFAULT_CACHE",
    "Engine",
    "Project",
    "StackError",
    "free_udp_range",
    "host_address",
]
