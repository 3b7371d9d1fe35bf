"""Structured logs: JSON lines when not on a terminal, readable lines when on one.

Every line carries the request id, channel and member id of the request it belongs to (set in
contextvars by the request middleware). Personal data is never logged: bodies and query
strings are not, and identity values never reach a log call.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
channel_var: ContextVar[str | None] = ContextVar("channel", default=None)
member_id_var: ContextVar[str | None] = ContextVar("member_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class RequestContextFilter(logging.Filter):
    """Copies the current request's ids onto each record when it is logged (not when it is
    formatted, which may happen elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (
            ("request_id", request_id_var),
            ("channel", channel_var),
            ("member_id", member_id_var),
        ):
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = " ".join(f"{k}={v}" for k, v in _context(record).items())
        text = f"{time} {record.levelname:<7} {record.name}: {record.getMessage()}" + (
            f"  {extra}" if extra else ""
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Route all logging (ours, uvicorn's, litestar's) through one handler on stderr."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our request middleware logs each request once, without query strings.
    logging.getLogger("uvicorn.access").disabled = True
