"""Logging for the ``tasklib`` command: human-readable lines, or one JSON object per line.

``--log-format json`` is for log pipelines (Loki, CloudWatch, Datadog): every line is an object
with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (a stable name such as
``task.completed``) and ``message``, plus the task fields the line is about: ``task_id``,
``task_name``, ``queue``, ``attempt``, ``duration_ms``, ``outcome``, ``child_pid``, ``worker_id``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
FIELDS = ("task_id", "task_name", "queue", "attempt", "duration_ms", "outcome", "retry_in_seconds", "child_pid", "worker_id")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the task fields come from ``extra=`` on the logging call."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or message,
            "message": message,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "info", log_format: LogFormat = "text") -> None:
    """Set up the root logger for a ``tasklib`` process (replacing any handler it had)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
