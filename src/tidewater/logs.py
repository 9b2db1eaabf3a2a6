"""How the long-running processes (``tidewater server``, ``site start``, ``pilot``) log.

``text`` (the default) is one human line per record; ``json`` is one JSON
object per line on stderr, for log collectors::

    {"time": "2026-12-07T19:20:01.123+00:00", "level": "INFO",
     "logger": "tidewater.controller", "message": "listening on ws://...",
     "exception": "Traceback ..."}          # only when there is one

:func:`configure` is what all three call; it replaces the root logger's
handlers, so calling it again (a second ``-v``) does not duplicate lines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message and,
    when the record carries one, exception (the formatted traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(fmt: str, level: int, stream: TextIO | None = None) -> None:
    """Log records at ``level`` and above to ``stream`` (stderr) in ``fmt`` (``text`` or
    ``json``), replacing the root logger's handlers. Raises ValueError for another
    format."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use {' or '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
