"""How raw callback bodies are stored: verbatim when Postgres can hold them, else escaped."""

from __future__ import annotations

import pytest

from app.callbacks.bodies import ESCAPED, original_body, stored_body

BODIES = [
    b'{"id": "task-unified-1", "status": "completed"}',
    b"",
    b"\x00",
    b"\xff\xfe",
    b"a\\x00b\x00c",
    b"\\\\x41 and \\",
    b"\xed\xa0\x80 is a lone surrogate encoded as UTF-8",
    "caf\u00e9 \U0001f600 \x00".encode(),
    ESCAPED.encode() + b"looks escaped but is not",
    bytes(range(256)),
]


@pytest.mark.parametrize("body", BODIES)
def test_every_body_comes_back_byte_for_byte(body: bytes) -> None:
    """Storing is lossless: the stored text gives back the exact bytes."""
    assert original_body(stored_body(body)) == body


@pytest.mark.parametrize("body", BODIES)
def test_the_stored_text_is_something_postgres_text_accepts(body: bytes) -> None:
    """No NUL and no unpaired surrogate ever reaches a text column."""
    stored = stored_body(body)
    assert "\x00" not in stored
    stored.encode("utf-8")  # raises on a lone surrogate


def test_a_well_formed_body_is_kept_verbatim() -> None:
    body = '{"id": "t", "usage": {"note": "caf\u00e9 \\u0000"}}'
    assert stored_body(body.encode()) == body


def test_an_escaped_body_reads_like_the_original() -> None:
    assert stored_body(b'{"a": "x\x00y\xff"} \\') == ESCAPED + '{"a": "x\\x00y\\xff"} \\\\'
