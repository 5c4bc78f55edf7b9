"""Structured logs: one JSON object per line on stderr.

Log calls pass their data as `extra={"fields": {...}}`; callers put only safe values there (route
names, key fingerprints, codes) — never a key, secret or signature.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("seawall")
request_log = logging.getLogger("seawall.request")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("seawall")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False
    # aiohttp's own loggers: keep their warnings, in the same format, without the access log.
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.client"):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.setLevel(logging.WARNING)
        other.propagate = False


def request_level(name: str) -> int | None:
    return None if name == "off" else LEVELS[name]
