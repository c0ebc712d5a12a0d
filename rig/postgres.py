"""Throwaway PostgreSQL clusters for tests and benchmarks (Debian's ``postgresql`` package).

``start()`` runs ``initdb`` in a directory of its own and starts ``postgres`` on
127.0.0.1 at a free port, with password (SCRAM) authentication over TCP and no Unix
socket: a client reaches it exactly as it would reach an operator's server, with a URL
carrying credentials. The cluster is durable like a production one (``fsync``,
``synchronous_commit`` and ``full_page_writes`` on), so a commit the store acknowledges
is really on disk.

Two roles: the superuser ``postgres`` (``PgServer.dsn``, for the rig's own
administration) and ``ivr``, an ordinary login role that owns the databases made by
``create_database()``, as an operator would set it up; the store never needs a
superuser.

PostgreSQL refuses to run as root: under root the cluster runs as Debian's ``postgres``
system user (its directory is chowned to it), otherwise as the current user. Several
clusters (several test processes) run side by side: each has its own directory and
port.

Stdlib only, like rig.sandbox: SQL goes through the cluster's own ``psql``.

    python -m rig.postgres start DIR    # prints the URL of database "ivr" (role ivr)
    python -m rig.postgres stop DIR [--remove]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.sandbox import die_with_parent_preexec, free_port

SUPERUSER = "postgres"
APP_ROLE = "ivr"
SYSTEM_USER = "postgres"  # Debian's package creates it; used when we are root
START_TIMEOUT = 60.0
STATE_FILE = "pgserver.json"
LOG_FILE = "postgres.log"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PgError(RuntimeError):
    """Starting or driving the throwaway PostgreSQL failed."""


def find_bindir() -> Path:
    """The directory with ``initdb``, ``postgres`` and ``psql``: ``$IVR_PG_BINDIR``, else
    the newest Debian ``/usr/lib/postgresql/N/bin``, else ``initdb`` on PATH."""
    wanted = ("initdb", "postgres", "psql")
    candidates: list[Path] = []
    if env := os.environ.get("IVR_PG_BINDIR"):
        candidates.append(Path(env))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for d in candidates:
        if all(os.access(d / name, os.X_OK) for name in wanted):
            return d
    raise PgError(
        "PostgreSQL server binaries (initdb, postgres, psql) not found: install Debian's "
        "`postgresql` package (scripts/install-deps does) or set IVR_PG_BINDIR"
    )


@dataclass
class PgServer:
    base_dir: Path  # holds data/, the log and the state file
    port: int
    password: str  # the superuser's
    app_password: str  # the ``ivr`` role's
    bindir: Path
    host: str = "127.0.0.1"
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / LOG_FILE

    @property
    def dsn(self) -> str:
        """The superuser's URL to the maintenance database ``postgres``."""
        return self.url("postgres")

    def url(self, database: str, *, user: str = SUPERUSER) -> str:
        password = self.password if user == SUPERUSER else self.app_password
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    # ----------------------------------------------------------- administration

    def psql(self, sql: str, *, database: str = "postgres", **variables: str) -> str:
        """Run ``sql`` as the superuser; returns psql's unaligned, tuples-only output.
        ``variables`` are psql variables: write ``:'name'`` in ``sql`` for a quoted
        literal (no SQL is ever built by formatting values in)."""
        args = [str(self.bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database]
        for name, value in variables.items():
            args += ["-v", f"{name}={value}"]
        env = {**_base_env(), "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"}
        # SQL on stdin, not -c: psql interpolates variables only in what it reads.
        res = subprocess.run(args, input=sql, capture_output=True, text=True, env=env,
                             timeout=60, check=False)
        if res.returncode != 0:
            raise PgError(f"psql failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database owned by the ``ivr`` role; returns that role's URL to it."""
        if not _NAME.fullmatch(name):
            raise PgError(f"database name {name!r} is not a plain lower-case identifier")
        self.psql(f"CREATE DATABASE {name} OWNER {APP_ROLE}")
        return self.url(name, user=APP_ROLE)

    def drop_database(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise PgError(f"database name {name!r} is not a plain lower-case identifier")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def terminate(self, target: int | str) -> int:
        """``pg_terminate_backend`` the backend with pid ``target`` (int), or every backend
        whose ``application_name`` is ``target`` (str), as an operator or a dead network
        would end a session. Waits (up to 5 s each) until they are gone; returns how many
        were terminated."""
        if isinstance(target, int):
            out = self.psql("SELECT pg_terminate_backend(:'pid'::int, 5000)::int",
                            pid=str(target))
        else:
            out = self.psql(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                "FROM pg_stat_activity WHERE application_name = :'name' "
                "AND pid <> pg_backend_pid()", name=target)
        return int(out or 0)

    # ----------------------------------------------------------- process

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _is_postmaster(self.pid, self.data_dir)

    def stop(self, timeout: float = 30.0, *, remove: bool = False) -> None:
        """Fast shutdown (SIGINT: sessions ended, a checkpoint written); SIGKILL after
        ``timeout``. ``remove`` also deletes the directory."""
        if self.running():
            self._signal(signal.SIGINT)
            if not self._wait(timeout):
                self.kill()
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (a crash of the database server)."""
        if self.running():
            # The process group: backends would otherwise linger until they notice.
            self._signal(signal.SIGKILL, group=True)
            self._wait(30.0)

    def _signal(self, sig: int, *, group: bool = False) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def _wait(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.running():  # not our child (the CLI's stop): poll for its exit
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def to_json(self) -> dict[str, Any]:
        return {"base_dir": str(self.base_dir), "port": self.port, "password": self.password,
                "app_password": self.app_password, "bindir": str(self.bindir),
                "host": self.host, "pid": self.pid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PgServer:
        return cls(base_dir=Path(data["base_dir"]), port=int(data["port"]),
                   password=data["password"], app_password=data["app_password"],
                   bindir=Path(data["bindir"]), host=data["host"], pid=data["pid"])


# ------------------------------------------------------------------ starting


def start(base_dir: Path | None = None, *, port: int | None = None,
          detached: bool = False) -> PgServer:
    """initdb and start a cluster in ``base_dir`` (a new temporary directory if None;
    it must not hold a cluster yet). Returns once it accepts connections. ``detached``:
    keep running after this process exits (the CLI); otherwise it dies with us."""
    bindir = find_bindir()
    if base_dir is None:
        base_dir = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
    base_dir = base_dir.absolute()
    base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (base_dir / "data").exists():
        raise PgError(f"{base_dir / 'data'} exists: not a fresh directory")
    runner = _runner()
    if runner is not None:
        _check_reachable(base_dir, runner)
        os.chown(base_dir, runner.pw_uid, runner.pw_gid)
    server = PgServer(base_dir=base_dir, port=0, password=secrets.token_urlsafe(18),
                      app_password=secrets.token_urlsafe(18), bindir=bindir)
    _initdb(server, runner)
    # free_port only knows its own process's ports: another test process may take ours
    # between the check and postgres binding it, so a bind failure retries elsewhere.
    for attempt in range(5):
        server.port = port if port is not None else free_port(udp=False)
        _configure(server)
        try:
            _launch(server, runner, detached)
            break
        except _PortTaken:
            if port is not None or attempt == 4:
                raise PgError(f"port {server.port} is taken; see {server.log_path}") from None
    try:
        server.psql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD :'pw'", pw=server.app_password)
    except BaseException:
        server.stop()
        raise
    return server


class _PortTaken(Exception):
    pass


def _runner() -> pwd.struct_passwd | None:
    """The account the cluster runs as: None for the current user, else (root) the
    ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PgError(f"running as root, and there is no {SYSTEM_USER!r} user to run "
                      "PostgreSQL as (Debian's postgresql package creates it)") from None


def _check_reachable(base_dir: Path, runner: pwd.struct_passwd) -> None:
    """The system user must be able to walk down to ``base_dir``: pytest's own temporary
    directories (0700, root's) are not, hence a clear error rather than initdb's."""
    groups = {runner.pw_gid} | set(os.getgrouplist(runner.pw_name, runner.pw_gid))
    for d in base_dir.parents:
        st = d.stat()
        if st.st_uid == runner.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise PgError(f"{base_dir}: user {runner.pw_name!r} cannot enter {d}; use a "
                          "directory below /tmp (or another place it can reach)")


def _base_env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
           "LANG": "C.UTF-8", "TZ": "UTC"}
    return env


def _as(runner: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen keywords that run a child as ``runner`` (nothing when it is us)."""
    if runner is None:
        return {}
    return {"user": runner.pw_uid, "group": runner.pw_gid, "extra_groups": [],
            "cwd": "/"}


def _initdb(server: PgServer, runner: pwd.struct_passwd | None) -> None:
    pwfile = server.base_dir / "pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(server.password + "\n")
    if runner is not None:
        os.chown(pwfile, runner.pw_uid, runner.pw_gid)
    try:
        res = subprocess.run(
            [str(server.bindir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER,
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
             # initdb's closing fsync of the fresh files only slows tests down; the
             # server itself runs with fsync on, so every commit is durable.
             "--no-sync", "--no-instructions"],
            capture_output=True, text=True, env=_base_env(), timeout=120, check=False,
            **_as(runner))
    finally:
        pwfile.unlink(missing_ok=True)
    if res.returncode != 0:
        raise PgError(f"initdb failed: {(res.stderr or res.stdout).strip()}")


def _configure(server: PgServer) -> None:
    # postgresql.auto.conf is read last and rewritten whole each time, so a retry on
    # another port simply replaces the previous attempt's settings.
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(server.port),
        "unix_socket_directories": "''",  # TCP + password only, like a remote server
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "max_connections": "200",
        "shared_buffers": "32MB",  # several clusters may run at once on a small machine
        "logging_collector": "off",  # stderr goes to LOG_FILE
        "log_line_prefix": "'%m [%p] %q%a '",
    }
    text = "".join(f"{k} = {v}\n" for k, v in settings.items())
    auto = server.data_dir / "postgresql.auto.conf"
    st = auto.stat()
    auto.write_text("# written by rig/postgres.py\n" + text)
    os.chown(auto, st.st_uid, st.st_gid)


def _launch(server: PgServer, runner: pwd.struct_passwd | None, detached: bool) -> None:
    log = open(server.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        if runner is not None:
            os.chown(server.log_path, runner.pw_uid, runner.pw_gid)
        proc = subprocess.Popen(
            [str(server.bindir / "postgres"), "-D", str(server.data_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_base_env(), start_new_session=True,
            preexec_fn=None if detached else die_with_parent_preexec(), **_as(runner))
    finally:
        log.close()
    server._proc, server.pid = proc, proc.pid
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = server.log_tail()
            if "could not bind" in tail or "Address already in use" in tail:
                raise _PortTaken()
            raise PgError(f"postgres exited ({proc.returncode}): {tail}")
        if _accepts_connections(server):
            break
        if time.monotonic() > deadline:
            server.stop(5)
            raise PgError(f"postgres not ready after {START_TIMEOUT:.0f} s: "
                          f"{server.log_tail()}")
        time.sleep(0.05)  # poll interval of the readiness check, not a fixed wait
    if detached:
        # Nobody will wait() for it here: mark the handle done so Popen.__del__ does
        # not warn about a child still running; stop() then works by pid.
        server._proc = None
        proc.returncode = 0


def _accepts_connections(server: PgServer) -> bool:
    """Connect and ask: ready, and the server on that port is this cluster (not one of
    another test process that took the port first)."""
    try:
        out = server.psql("SHOW data_directory")
    except (PgError, subprocess.TimeoutExpired):
        return False
    return Path(out) == server.data_dir


def _is_postmaster(pid: int, data_dir: Path) -> bool:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return False
    return first.strip() == str(pid)


# ------------------------------------------------------------------ CLI


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rig.postgres", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="initdb DIR and start PostgreSQL in the background")
    p_start.add_argument("dir", type=Path)
    p_start.add_argument("--port", type=int)
    p_stop = sub.add_parser("stop", help="stop the PostgreSQL started in DIR")
    p_stop.add_argument("dir", type=Path)
    p_stop.add_argument("--remove", action="store_true", help="also delete DIR")
    args = parser.parse_args(argv)
    state = args.dir / STATE_FILE
    try:
        if args.cmd == "start":
            server = start(args.dir, port=args.port, detached=True)
            try:
                fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(server.to_json(), f, indent=2)
                url = server.create_database("ivr")
            except BaseException:
                server.stop()
                raise
            print(f"PostgreSQL {server.host}:{server.port} (pid {server.pid}), log "
                  f"{server.log_path}")
            print(f"store.url: {url}")
            print(f"superuser: {server.dsn}")
        else:
            if not state.exists():
                print(f"no {state}", file=sys.stderr)
                return 1
            server = PgServer.from_json(json.loads(state.read_text()))
            server.stop(remove=args.remove)
            if not args.remove:
                state.unlink(missing_ok=True)
    except PgError as exc:
        print(f"rig.postgres: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
