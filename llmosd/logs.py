"""Structured logs: one line per event on stderr, as key=value text or JSON."""
from __future__ import annotations

import json
import logging
import sys
import time


class LineFormatter(logging.Formatter):
    """ts=... level=... logger=... msg="..." plus any `fields` passed in `extra`."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        item = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        item.update(getattr(record, "fields", {}))
        if record.exc_info:
            item["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(item, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in item.items())


def _quote(v: object) -> str:
    s = str(v)
    if not s or any(c in s for c in ' ="\n\t'):
        return json.dumps(s)
    return s


def setup(fmt: str = "text", level: str = "info") -> logging.Logger:
    """Route the `llmos` loggers to stderr, one line each; returns the daemon's logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(fmt))
    root = logging.getLogger("llmos")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return logging.getLogger("llmos.daemon")
