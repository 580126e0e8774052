"""Callback tokens are scrubbed from text in every form the provider might quote them."""

from __future__ import annotations

import base64
import re
import uuid
from urllib.parse import quote

import pytest

from app.security import REDACTED, callback_path, callback_token, scrub_token
from tests.helpers import CALLBACK_SECRET


def a_token_with_both_url_safe_characters() -> tuple[uuid.UUID, str]:
    """A real token holding `-` and `_`, the characters its other forms change."""
    for number in range(10_000):
        task_id = uuid.UUID(int=number)
        token = callback_token(CALLBACK_SECRET, task_id)
        if "-" in token and "_" in token:
            return task_id, token
    raise AssertionError("no such token in 10,000 tries")


TASK_ID, TOKEN = a_token_with_both_url_safe_characters()
URL = "https://hooks.example.com" + callback_path(TASK_ID, TOKEN)
STANDARD = TOKEN.replace("-", "+").replace("_", "/")
PADDED = TOKEN + "="

FORMS = {
    "the bare token": TOKEN,
    "the callback URL": URL,
    "the percent-encoded URL": quote(URL, safe=""),
    "the URL encoded twice": quote(quote(URL, safe=""), safe=""),
    "padded base64url": PADDED,
    "standard base64": STANDARD + "=",
    "standard base64, percent-encoded": quote(STANDARD + "=", safe=""),
    "standard base64, lower-case escapes": re.sub(
        "%2[BF]", lambda m: m.group().lower(), quote(STANDARD, safe="")
    ),
    "standard base64 encoded twice": quote(quote(STANDARD, safe=""), safe=""),
}


def test_the_forms_are_what_they_say() -> None:
    assert base64.urlsafe_b64decode(PADDED) == base64.b64decode(STANDARD + "=")
    assert "%2B" in FORMS["standard base64, percent-encoded"]


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_every_form_of_the_token_is_scrubbed(form: str) -> None:
    """Quoted in a provider's message, no form of the token survives, nor a long piece of it."""
    text = f'callback to "{form}" refused; retry'
    scrubbed = scrub_token(text, TOKEN)
    assert REDACTED in scrubbed
    assert scrubbed.startswith('callback to "')
    assert scrubbed.endswith('" refused; retry')
    for piece in (TOKEN, STANDARD, TOKEN[:16], TOKEN[-16:]):
        assert piece not in scrubbed


def test_text_without_the_token_is_left_alone() -> None:
    text = "Invalid callback_url: https://hooks.example.com/v1/callbacks/evolink/x/other"
    assert scrub_token(text, TOKEN) is text
    assert scrub_token(text, None) is text
