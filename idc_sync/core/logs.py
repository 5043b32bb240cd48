"""Log output: human-readable lines by default, JSON lines with ``log_format = "json"``
(one object per line for journald, Loki or Elasticsearch), and a short memory of recent
warnings and errors for ``/status``.

A JSON line carries the series and the object it concerns: from ``extra={"series": ...,
"object": ...}`` when the call passes them, otherwise read off the call's arguments,
because every IDC object key is ``<crdc_series_uuid>/<crdc_instance_uuid>.dcm`` and a
series is named by its crdc_series_uuid."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import deque
from typing import IO, Any

LOGGER = "idc_sync"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_KEY = re.compile(rf"^({_UUID})/{_UUID}\.dcm$")
_SERIES = re.compile(rf"^{_UUID}$")

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def about(series: str, key: str | None = None, **fields: object) -> dict[str, object]:
    """``extra=`` for a log call about one series (and one of its objects): JSON lines get
    them as ``series`` and ``object``; ``fields`` add more (``source``, ``collection``)."""
    extra: dict[str, object] = {"series": series, **fields}
    if key is not None:
        extra["object"] = key
    return extra


def concerns(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """(series, object) a record is about, if it names them."""
    series = getattr(record, "series", None)
    key = getattr(record, "object", None)
    if series is None or key is None:
        arguments = record.args if isinstance(record.args, tuple) else ()
        for value in arguments:
            text = str(value) if not isinstance(value, int | float) else ""
            match = _KEY.match(text)
            if match is not None:
                key = key or text
                series = series or match.group(1)
            elif series is None and _SERIES.match(text):
                series = text
    return (
        None if series is None else str(series),
        None if key is None else str(key),
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, series,
    object, any other ``extra=`` fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        series, key = concerns(record)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if series is not None:
            line["series"] = series
        if key is not None:
            line["object"] = key
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and name not in ("series", "object"):
                line[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(
    level: str,
    log_format: str = "text",
    stream: IO[str] | None = None,
    handler: logging.Handler | None = None,
) -> logging.Handler:
    """Send idc-sync's log to ``stream`` (stderr) in the chosen format; ``handler`` replaces
    the text handler (the CLI passes a rich one on a terminal). Returns the handler."""
    if log_format == "json":
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger(LOGGER)
    kept = [h for h in root.handlers if isinstance(h, RecentProblems)]
    root.handlers[:] = [handler, *kept]
    root.setLevel(level.upper())
    root.propagate = False
    # botocore and aiohttp are chatty at INFO about things our own log already says
    logging.getLogger("botocore").setLevel(logging.WARNING)
    return handler


class RecentProblems(logging.Handler):
    """Keeps the last warnings and errors (for /status's "recent_errors")."""

    def __init__(self, capacity: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.entries: deque[dict[str, Any]] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            series, key = concerns(record)
            self.entries.append({
                "time": record.created,
                "level": record.levelname.lower(),
                "message": record.getMessage(),
                "series": series,
                "object": key,
            })  # fmt: skip
        except Exception:  # a logging handler must never raise into the caller
            self.handleError(record)
