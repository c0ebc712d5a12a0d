"""Who is calling the HTTP API, and what they may do (SPEC R23).

Three kinds of principal:

- **agent**: logs in with a password (``agents.<id>.password_hash``); sees and acts on
  its own offers and its own state only.
- **supervisor**: logs in (``supervisors:``); sees everything, cancels and books
  callbacks, sets any agent's state. Never accepts an offer for an agent.
- **integration**: the bearer token (``http.api_token``), limited to
  ``http.api_scopes`` (read, callbacks, agents). A website's "call me back" form gets
  ``[callbacks]`` and nothing else.

A console login is a session cookie (random 256-bit id, kept in memory: a restart logs
everyone out, which also revokes them): ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when
the request came over TLS (a reverse proxy sets ``X-Forwarded-Proto``). State changes
made with the cookie must carry the session's CSRF token in ``X-CSRF-Token`` (a cross-site
form cannot set a header, and SameSite=Strict keeps the cookie off cross-site requests:
two independent fences). The bearer token is never sent by a browser by itself, so it
needs none. Failed logins are rate limited per login and per client address.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from ivr import passwords
from ivr.config import Config

COOKIE = "ivr_session"
CSRF_HEADER = "X-CSRF-Token"
#: a session ends after this long without a request, and in any case after MAX_AGE
IDLE_TIMEOUT = 12 * 3600.0
MAX_AGE = 24 * 3600.0
#: failed logins allowed per window, per login name and per client address
LOGIN_FAILURES = 5
LOGIN_WINDOW = 300.0
#: sessions kept at most (oldest dropped first): memory stays bounded under abuse
MAX_SESSIONS = 10_000

AGENT, SUPERVISOR, INTEGRATION = "agent", "supervisor", "integration"
ROLES = (AGENT, SUPERVISOR, INTEGRATION)
#: scopes a supervisor holds (all); an agent holds none of them (its own things only)
ALL_SCOPES = frozenset({"read", "callbacks", "agents"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Principal:
    login: str
    role: str
    name: str = ""
    scopes: frozenset[str] = frozenset()
    #: the session's CSRF token (cookie sessions only)
    csrf: str = ""

    @property
    def agent_id(self) -> str | None:
        return self.login if self.role == AGENT else None

    def may(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class Login:
    login: str
    role: str
    name: str
    password_hash: str


def logins(cfg: Config) -> dict[str, Login]:
    """Everyone who can log in to a console (agents with a password, supervisors)."""
    out = {a.id: Login(a.id, AGENT, a.name, a.password_hash)
           for a in cfg.agents.values() if a.password_hash}
    out.update({s.id: Login(s.id, SUPERVISOR, s.name, s.password_hash)
                for s in cfg.supervisors.values()})
    return out


@dataclass
class Session:
    principal: Principal
    created: float
    seen: float


@dataclass
class Sessions:
    """Console sessions in memory, by their random id."""

    clock: Callable[[], float] = time.monotonic
    _by_id: dict[str, Session] = field(default_factory=dict)

    def create(self, login: Login) -> tuple[str, Principal]:
        now = self.clock()
        self._expire(now)
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        sid = secrets.token_urlsafe(32)
        scopes = ALL_SCOPES if login.role == SUPERVISOR else frozenset()
        principal = Principal(login.login, login.role, login.name, scopes,
                              csrf=secrets.token_urlsafe(24))
        self._by_id[sid] = Session(principal, now, now)
        return sid, principal

    def get(self, sid: str) -> Principal | None:
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > IDLE_TIMEOUT or now - session.created > MAX_AGE:
            del self._by_id[sid]
            return None
        session.seen = now
        return session.principal

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    def _expire(self, now: float) -> None:
        stale = [sid for sid, s in self._by_id.items()
                 if now - s.seen > IDLE_TIMEOUT or now - s.created > MAX_AGE]
        for sid in stale:
            del self._by_id[sid]


@dataclass
class LoginLimiter:
    """At most ``LOGIN_FAILURES`` failed logins per ``LOGIN_WINDOW`` per key (a login
    name, a client address). A success does not reset the address's count (one right
    password must not buy another round of guesses at the others)."""

    clock: Callable[[], float] = time.monotonic
    limit: int = LOGIN_FAILURES
    window: float = LOGIN_WINDOW
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until a login attempt under these keys is allowed (0: now)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            q = self._failures.get(key)
            if q is None:
                continue
            while q and now - q[0] >= self.window:
                q.popleft()
            if not q:
                del self._failures[key]
            elif len(q) >= self.limit:
                wait = max(wait, self.window - (now - q[0]))
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        if len(self._failures) > 100_000:  # bounded under a spray of distinct keys
            self._failures.clear()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)


def check_password(login: Login | None, password: str) -> bool:
    """Constant work whether the login exists or not (no enumeration by timing)."""
    if login is None:
        passwords.verify(password, passwords.DUMMY_HASH)
        return False
    return passwords.verify(password, login.password_hash)


def integration(token: str, given: str, scopes: tuple[str, ...]) -> Principal | None:
    """The integration principal when ``given`` is ``Bearer <token>``."""
    try:
        given_bytes = given.encode("ascii")
    except UnicodeError:
        return None
    if not token or not given_bytes:
        return None
    if not hmac.compare_digest(given_bytes, f"Bearer {token}".encode()):
        return None
    return Principal("integration", INTEGRATION, "integration", frozenset(scopes))


def csrf_ok(principal: Principal, request: web.Request) -> bool:
    if principal.role == INTEGRATION:
        return True  # bearer token: a browser never sends it by itself
    given = request.headers.get(CSRF_HEADER, "")
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "replace"),
                                               principal.csrf.encode())
