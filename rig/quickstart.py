"""The quick start's service config (README "Quick start"), written by ``scripts/up``.

``write_config(state_dir, api_port)`` reads the sandboxed Asterisk that
``python -m rig.sandbox up --demo-caller --state-dir <state_dir>`` described in
``<state_dir>/asterisk.json`` and writes ``<state_dir>/config.yaml`` (mode 0600) for
``ivr run``: region US, queues ``support`` (DID 5550100) and ``sales`` (DID 5550200) in
overflow with one waiting caller (``max_waiting: 1``) or an estimated wait over 2 min,
the outbound route ``PJSIP/{national}@caller`` (the callback rings the demo caller's own
softphone) and one agent ``agent`` on the registering account. The API bearer token is
kept in ``<state_dir>/api_token`` (0600, made once). ``tests/test_quickstart.py`` walks
the README's steps on this very config, with shorter offer timings.

``python -m rig.quickstart STATE_DIR API_PORT`` writes it and prints the softphone
accounts and what to try.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from ivr.passwords import hash_password

REPO = Path(__file__).resolve().parent.parent
TOKEN_FILE = "api_token"
CONFIG_FILE = "config.yaml"
#: the queue the README's walkthrough calls, and its DID
DEMO_QUEUE = "support"
DEMO_DID = "5550100"
#: the one agent of the quick start (``POST /api/agents/agent/state``)
DEMO_AGENT = "agent"
#: the quick start's supervisor login (the wallboard)
DEMO_SUPERVISOR = "supervisor"
#: console passwords, generated once, kept beside the config (0600)
PASSWORDS_FILE = "console_passwords.json"


def _instance(state_dir: Path) -> dict[str, Any]:
    """What ``rig.sandbox up`` wrote about the Asterisk it started."""
    path = state_dir / "asterisk.json"
    if not path.exists():
        raise SystemExit(f"no {path}: start Asterisk first "
                         f"(python -m rig.sandbox up --demo-caller --state-dir {state_dir})")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not data.get("caller_password"):
        raise SystemExit(f"{path}: not an Asterisk started with --demo-caller "
                         "(scripts/down, then scripts/up)")
    return data


def api_token(state_dir: Path) -> str:
    """The API bearer token of the quick start, generated once (file mode 0600)."""
    token_file = state_dir / TOKEN_FILE
    if not token_file.exists():
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return token_file.read_text().strip()


def console_passwords(state_dir: Path) -> dict[str, str]:
    """The consoles' passwords of the quick start (agent, supervisor), generated once
    (file mode 0600); the config holds only their scrypt hashes."""
    path = state_dir / PASSWORDS_FILE
    if not path.exists():
        made = {DEMO_AGENT: secrets.token_urlsafe(12), DEMO_SUPERVISOR: secrets.token_urlsafe(12)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(made, f)
    data: dict[str, str] = json.loads(path.read_text())
    return data


def write_config(
    state_dir: Path,
    api_port: int,
    *,
    first_offer_after: str = "30s",
    repeat_offer_every: str = "120s",
) -> Path:
    """Write ``<state_dir>/config.yaml`` for the sandbox of ``<state_dir>/asterisk.json``;
    return its path. The offer timings are parameters so tests need not wait 30 s."""
    inst = _instance(state_dir)
    token = api_token(state_dir)
    logins = console_passwords(state_dir)
    # max_waiting 1: with one agent busy or not ready, a second caller is in overflow.
    queue = {"caller_id": "2015550100", "max_waiting": 1, "max_ewt": "2m",
             "first_offer_after": first_offer_after,
             "repeat_offer_every": repeat_offer_every}
    cfg = {
        # Callbacks go only to valid numbers of this country (libphonenumber); the demo
        # caller presents a US number.
        "region": "US",
        "ari": {"url": inst["ari_url"], "user": inst["ari_user"],
                "password": inst["ari_password"], "app": inst["app_name"]},
        "http": {"bind": "127.0.0.1", "port": api_port, "api_token": token},
        "store": {"path": str((state_dir / "ivr.sqlite3").resolve())},
        "prompts": {"dir": str(REPO / "prompts"), "asterisk_dir": inst["prompts_dir"]},
        # Callbacks ring the demo caller's own softphone (registered as "caller"); against
        # a real carrier this is e.g. PJSIP/{e164}@carrier.
        "outbound": {"dial": "PJSIP/{national}@caller", "dial_timeout": "30s"},
        "queues": {DEMO_QUEUE: {"did": DEMO_DID, **queue},
                   "sales": {"did": "5550200", **queue}},
        "agents": {DEMO_AGENT: {"name": "Quick-start agent",
                                "endpoint": f"PJSIP/{inst['reg_user']}",
                                "queues": [DEMO_QUEUE, "sales"],
                                "password_hash": hash_password(logins[DEMO_AGENT])}},
        "supervisors": {DEMO_SUPERVISOR: {
            "name": "Quick-start supervisor",
            "password_hash": hash_password(logins[DEMO_SUPERVISOR])}},
    }
    path = state_dir / CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


def curl_agent_state(state_dir: Path, api_port: int, *, ready: bool) -> str:
    """The shell command that makes the quick start's agent ready / not ready (README
    step 2 and 4). The API takes JSON only: without the Content-Type header curl's
    ``-d`` sends a form (``application/x-www-form-urlencoded``) and gets 415."""
    body = json.dumps({"ready": ready})
    return (f'curl -H "Authorization: Bearer $(cat {state_dir / TOKEN_FILE})" '
            f'-H "Content-Type: application/json" \\\n'
            f"       -d '{body}' http://127.0.0.1:{api_port}/api/agents/{DEMO_AGENT}/state")


def instructions(state_dir: Path, api_port: int) -> str:
    """What ``scripts/up`` prints: the two softphone accounts and the walkthrough."""
    inst = _instance(state_dir)
    host = inst.get("sip_bind", "127.0.0.1")
    if host == "0.0.0.0":  # IVR_SIP_BIND=0.0.0.0: softphones on other hosts
        host = "<this host's address>"
    token_file = state_dir / TOKEN_FILE
    api = f"http://127.0.0.1:{api_port}"
    logins = console_passwords(state_dir)
    return f"""
Softphones (SIP/UDP to {host}:{inst['sip_port']}, codec ulaw, DTMF RFC 4733):
  agent : user {inst['reg_user']}  password {inst['reg_password']}
  caller: user caller    password {inst['caller_password']}   -> dial {DEMO_DID} ({DEMO_QUEUE})
          (Asterisk presents it as 2015550123, a valid US number: it gets the offer)
Consoles: {api}/  (log in as {DEMO_AGENT} / {logins[DEMO_AGENT]} for the agent console,
          {DEMO_SUPERVISOR} / {logins[DEMO_SUPERVISOR]} for the wallboard; kept in
          {state_dir / PASSWORDS_FILE})
Config: {state_dir / CONFIG_FILE}   API: {api}/api/openapi.json (Bearer token in {token_file})

Try it (README, "Quick start"): make the agent not ready so the queue overflows (the
agent console's "Not ready" button, or:
  {curl_agent_state(state_dir, api_port, ready=False)}
), call {DEMO_DID} from the caller, wait 30 s for the offer, press 1, hear the
confirmation; then make the agent available: the agent's phone rings CALLBACK and the
console shows the callback; answer, then Accept (on the console or 1 on the phone), and
the caller's phone rings with the callback.
"""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: quickstart.py STATE_DIR API_PORT", file=sys.stderr)
        return 2
    state_dir, api_port = Path(argv[0]), int(argv[1])
    write_config(state_dir, api_port)
    print(instructions(state_dir, api_port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
