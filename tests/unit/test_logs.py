"""Log lines: JSON or text, with their context, and never a callback token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

import structlog

from app.logs import LogFormat, RedactTokens, formatter, redact

PATH = "/v1/callbacks/evolink/6f1c5a34-0000-4000-8000-000000000001/s3cr3t-T0ken_x"


class _Url:
    """Stands for objects such as httpx.URL that log as text but are not str."""

    def __str__(self) -> str:
        return "http://127.0.0.1:8000" + PATH


def test_redact_keeps_the_task_and_drops_the_token() -> None:
    """The path keeps its task id; the token becomes [redacted]."""
    assert redact(f'"POST {PATH} HTTP/1.1" 200') == (
        '"POST /v1/callbacks/evolink/6f1c5a34-0000-4000-8000-000000000001/[redacted] HTTP/1.1" 200'
    )


def test_the_filter_redacts_tokens_in_arguments_of_any_type() -> None:
    """A token inside a non-str argument is still removed from the rendered message."""
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "HTTP Request: %s %s", ("POST", _Url()), None
    )
    assert RedactTokens().filter(record)
    assert "s3cr3t" not in record.getMessage()
    assert record.getMessage().endswith("/[redacted]")


def _emit(log_format: LogFormat, emit: Callable[[logging.Logger], None]) -> str:
    """What the process's handler writes for the records `emit` makes, in `log_format`."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RedactTokens())
    logger = logging.getLogger(f"edithook.test.{log_format}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        emit(logger)
    finally:
        logger.handlers[:] = []
    return out.getvalue()


def test_json_lines_carry_the_fields_a_platform_reads() -> None:
    """One JSON object a line, with time, level, logger, message and the bound context."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(client="alpha", task_id="t-1")
    try:
        text = _emit("json", lambda log: log.warning("slow %s", "answer"))
    finally:
        structlog.contextvars.clear_contextvars()
    [line] = text.splitlines()
    record = json.loads(line)
    assert record["message"] == "slow answer"
    assert record["level"] == "warning"
    assert record["logger"] == "edithook.test.json"
    assert record["time"].endswith("Z")
    assert (record["client"], record["task_id"]) == ("alpha", "t-1")


def test_a_token_is_redacted_from_json_lines_and_their_tracebacks() -> None:
    """Neither the message nor the exception text of a JSON line keeps a callback token."""

    def emit(logger: logging.Logger) -> None:
        try:
            raise RuntimeError(f"failed on {PATH}")
        except RuntimeError:
            logger.exception("callback %s", _Url())

    text = _emit("json", emit)
    [line] = text.splitlines()
    record = json.loads(line)
    assert "Traceback" in record["exception"]
    assert "s3cr3t" not in line


def test_text_lines_are_for_people_and_redacted_too() -> None:
    """The text format shows level, logger and message on one line, without the token."""
    text = _emit("text", lambda log: log.info("got %s", PATH))
    [line] = text.splitlines()
    assert "info" in line
    assert "edithook.test.text" in line
    assert "/[redacted]" in line
    assert "s3cr3t" not in line
