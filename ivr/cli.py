"""Command line: ``ivr run CONFIG``, ``ivr check-config CONFIG``, ``ivr hash-password``.

Both load the file and probe the store the same way ("check-config = run"): whatever
``run`` would refuse at start, ``check-config`` refuses too, with the key and line,
exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import sqlite3
import sys
from collections.abc import Sequence

from ivr import config as config_mod
from ivr import logs, passwords
from ivr import store as store_mod
from ivr.sim import command as sim_command

log = logging.getLogger("ivr.cli")

EXIT_CONFIG = 2


def _bad(message: str) -> int:
    print(f"ivr: bad configuration: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _store_error(cfg: config_mod.Config, reason: str) -> str:
    key = "store.url" if cfg.store_url else "store.path"
    return str(config_mod.ConfigError(reason, key, cfg.line_of(key)))


def _hash_password() -> int:
    """Asked twice on a terminal; one line read from a pipe."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            print("ivr: the two passwords differ", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < 8:
        print("ivr: use at least 8 characters", file=sys.stderr)
        return 1
    print(passwords.hash_password(first))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivr", description="Direct-callback IVR for Asterisk")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config")
    run = sub.add_parser("run", help="run the service")
    run.add_argument("config")
    sub.add_parser("hash-password", help="read a console password (stdin) and print the "
                   "password_hash to put in the config")
    sim_command.add_parsers(sub)  # the what-if simulator: simulate, export-arrivals
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        return _hash_password()
    if args.command in ("simulate", "export-arrivals"):
        return sim_command.run(args)

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        return _bad(str(exc))
    if cfg.store_url:
        from ivr.pgstore import probe_url  # late: only a PostgreSQL store needs asyncpg

        reason = probe_url(cfg.store_url)
    else:
        reason = store_mod.probe(cfg.store_path)
    if reason is not None:
        return _bad(_store_error(cfg, reason))
    if args.command == "check-config":
        print(json.dumps({"ok": True, **config_mod.as_dict(cfg)}, indent=2))
        return 0

    from ivr.app import Fenced, StoreUnusable, run_forever  # late: check-config needs no aiohttp

    logs.setup(cfg.log_level, cfg.log_format)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_forever(cfg))
    except Fenced as exc:
        # EX_TEMPFAIL: a supervisor (systemd Restart=, compose restart:) starts it
        # again, and it comes back as a standby.
        print(f"ivr: stopped: lost the active lock ({exc}); start again to stand by",
              file=sys.stderr)
        return 75
    except StoreUnusable as exc:  # a store the probe could not foresee (opened first)
        log.debug("opening the store failed", exc_info=True)
        return _bad(_store_error(cfg, str(exc)))
    except (store_mod.StoreError, sqlite3.Error, OSError) as exc:  # e.g. HTTP port taken
        log.debug("stopped by an error", exc_info=True)
        print(f"ivr: stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
