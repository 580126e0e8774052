"""Logging set-up: JSON lines for a platform, or text for a person; never a callback token.

Every record goes through the standard library, whoever made it (edithook, uvicorn,
procrastinate, SQLAlchemy), and is rendered by structlog: in JSON, one object a line with
`time`, `level`, `logger`, `message`, and, where known, `request_id` (from the request's
`X-Request-ID`), `client` and `task_id` (bound by the request's handling).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Literal

import structlog
from asgi_correlation_id import correlation_id
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["json", "text"]

# /v1/callbacks/evolink/<task id>/<token> → the token replaced, wherever the path is printed.
_CALLBACK_TOKEN = re.compile(r"(/v1/callbacks/evolink/[^/\s\"?]+/)[^/\s\"?]+")


def redact(text: str) -> str:
    return _CALLBACK_TOKEN.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Rewrites any record whose formatted message carries a callback URL's token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _add_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    request_id = correlation_id.get()
    if request_id:
        event.setdefault("request_id", request_id)
    return event


def _redact_values(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    # The stdlib filter has redacted the message; this covers traceback text and extras.
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter that renders any standard-library record in `log_format`."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        # JSON's `time` is ISO 8601 in UTC; the text renderer leads with `timestamp`.
        structlog.processors.TimeStamper(
            fmt="iso", utc=True, key="time" if log_format == "json" else "timestamp"
        ),
    ]
    final: list[Processor]
    if log_format == "json":
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_values,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ]
    else:
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_values,
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)


def configure_logging(
    level: str = "info", log_format: LogFormat = "text", stream: IO[str] | None = None
) -> None:
    """One handler on the root logger for the app, uvicorn and the libraries, with redaction."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty at INFO about their own machinery; their warnings still show.
    for name in ("alembic", "pgserver", "httpx"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


# The log config uvicorn gets: leave handlers alone, ours carry the redaction.
UVICORN_LOG_CONFIG: dict[str, object] = {"version": 1, "disable_existing_loggers": False}
