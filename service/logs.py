"""Structured logs: JSON lines when not on a terminal, readable lines when on one.

Every line carries the request id, channel and member id of the request it belongs to (set in
contextvars by the request middleware). Personal data is never logged: bodies and query
strings are not, and identity values never reach a log call.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

import msgspec

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


_encode_json = msgspec.json.Encoder(enc_hook=str).encode


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    # A record from the queue carries its traceback already formatted (see _Enqueue).
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        exception = _exception(self, record)
        if exception:
            line["exception"] = exception
        return _encode_json(line).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = " ".join(f"{k}={v}" for k, v in _context(record).items())
        text = f"{time} {record.levelname:<7} {record.name}: {record.getMessage()}" + (
            f"  {extra}" if extra else ""
        )
        exception = _exception(self, record)
        if exception:
            text += "\n" + exception
        return text


class _Enqueue(QueueHandler):
    """Hands records to the writer thread, with what must be read in the caller's thread (the
    message, the traceback; the request ids, by the filter) already on them."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.message = record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: QueueListener | None = None


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Route all logging (ours, uvicorn's, litestar's) through one handler on stderr.

    Records are formatted and written by a thread of their own (QueueHandler): a request's log
    line costs the event loop a queue put, not a JSON encoding and a write to stderr.
    """
    global _listener
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _Enqueue(records)
    handler.addFilter(RequestContextFilter())
    if _listener is not None:
        atexit.unregister(_listener.stop)
        _listener.stop()
    _listener = QueueListener(records, writer)
    _listener.start()
    atexit.register(_listener.stop)  # flushes what is queued
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our request middleware logs each request once, without query strings.
    logging.getLogger("uvicorn.access").disabled = True
