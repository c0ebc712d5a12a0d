"""Logging set-up: one line of text per record, or one JSON object (``log_format: json``,
with ``python-json-logger``: a log shipper then needs no parsing rules).

Flows log through ``ItemLogger``, which puts the work item and channel on every record
(``item``, ``chan`` fields in JSON; a ``[item=… chan=…]`` prefix in text). Caller
numbers and keyed digits are logged at DEBUG only.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log would name every poll of the consoles: warnings only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
