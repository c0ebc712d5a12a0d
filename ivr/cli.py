"""Command line: ``ivr run CONFIG`` and ``ivr check-config CONFIG``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence

from ivr import config as config_mod


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivr", description="Direct-callback IVR for Asterisk")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config")
    run = sub.add_parser("run", help="run the service")
    run.add_argument("config")
    args = parser.parse_args(argv)

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"ivr: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps({"ok": True, **config_mod.as_dict(cfg)}, indent=2))
        return 0

    from ivr.app import run_forever  # imported late: check-config needs no aiohttp loop

    logging.basicConfig(
        level=cfg.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_forever(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
