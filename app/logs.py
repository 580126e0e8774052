"""Logging set-up; callback tokens never reach a log line."""

from __future__ import annotations

import logging
import re

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


def configure_logging(level: str = "info") -> None:
    """One stderr handler for the app and uvicorn, with token redaction on every record."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
