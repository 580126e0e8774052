"""Callback tokens are redacted from every log record, however it was built."""

from __future__ import annotations

import logging

from app.logs import RedactTokens, redact

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
