"""Parsing what clients send, without a database: Prefer: wait, and the request's hash."""

from __future__ import annotations

from typing import Any

import pytest

from app.tasks.schemas import TaskCreate
from app.tasks.service import request_hash
from app.waiting import parse_prefer_wait


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("wait=10", 10.0),
        ("  WAIT = 7 ", 7.0),
        ('wait="3"', 3.0),
        ("wait=0", 0.0),
        ("wait=600", 60.0),
        ("respond-async, wait=5", 5.0),
        ("return=minimal; foo=bar, wait=4;x=1", 4.0),
        ('handling=lenient, foo="a,wait=9", wait=2', 2.0),
        ("wait=8, wait=1", 8.0),
        ("wait=abc", None),
        ("wait=-5", None),
        ("wait=1.5", None),
        ("wait=", None),
        ("wait", None),
        ("respond-async", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_prefer_wait(header: str | None, expected: float | None) -> None:
    """The first wait preference is read in seconds, capped at 60; a malformed one is ignored."""
    assert parse_prefer_wait(header) == expected


def test_parse_prefer_wait_custom_maximum() -> None:
    """The cap is the caller's `maximum`."""
    assert parse_prefer_wait("wait=30", maximum=5) == 5.0


EDIT: dict[str, Any] = {"prompt": "make it blue", "image_urls": ["https://cdn.example.com/a.png"]}


def test_the_request_hash_ignores_key_order_and_defaults_spelled_out() -> None:
    """The same edit hashes the same however its JSON was written."""
    spelled = TaskCreate.model_validate({**EDIT, "n": 1})
    reordered = TaskCreate.model_validate(dict(reversed(list(EDIT.items()))))
    assert request_hash(spelled) == request_hash(reordered)


@pytest.mark.parametrize(
    "change",
    [{"prompt": "make it red"}, {"n": 2}, {"image_urls": ["https://cdn.example.com/b.png"]}],
)
def test_the_request_hash_tells_a_different_edit_apart(change: dict[str, Any]) -> None:
    """Any difference in what was asked for changes the hash."""
    base = TaskCreate.model_validate(EDIT)
    assert request_hash(TaskCreate.model_validate({**EDIT, **change})) != request_hash(base)
