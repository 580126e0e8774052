"""Webhook secrets, signatures, the retry schedule and Retry-After, without I/O; every
signature checked with the `standardwebhooks` library a caller uses."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.models import WebhookEndpoint
from app.settings import parse_schedule
from app.webhooks import signing
from app.webhooks.delivery import retry_after_seconds

BODY = '{"type":"task.succeeded","timestamp":"2026-12-02T10:00:00Z","data":{}}'


def test_a_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    """The Standard Webhooks form, at least 24 bytes, different every time."""
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != signing.new_secret()


def test_during_the_overlap_both_secrets_sign_and_after_it_only_the_new_one() -> None:
    """A rotation keeps the old secret signing for 24 h; then its signature is gone."""
    now = datetime.now(UTC)
    endpoint = WebhookEndpoint(secret=signing.new_secret())
    old = endpoint.secret
    new = signing.rotate(endpoint, now)
    keys = signing.signing_secrets(new, endpoint.previous_secret, endpoint.previous_until, now)
    headers = signing.headers("msg-1", BODY, keys, now)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(BODY, headers)["type"] == "task.succeeded"

    later = now + timedelta(hours=24, seconds=1)
    keys = signing.signing_secrets(new, endpoint.previous_secret, endpoint.previous_until, later)
    assert keys == [new]
    headers = signing.headers("msg-1", BODY, keys, now)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, headers)


def test_a_changed_body_or_id_does_not_verify() -> None:
    """The signature covers the id and the bytes."""
    secret = signing.new_secret()
    now = datetime.now(UTC)
    headers = signing.headers("msg-1", BODY, [secret], now)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("succeeded", "failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg-2"})


def test_the_schedule_reads_units_and_refuses_what_it_cannot() -> None:
    """The default is Standard Webhooks' schedule; ms, s, m, h and d are understood."""
    assert parse_schedule("5s,5m,30m,2h,5h,10h,14h,20h,24h") == [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        50400,
        72000,
        86400,
    ]
    assert parse_schedule("250ms, 1d") == [0.25, 86400]
    for bad in ("5x", "soon", "-1s"):
        with pytest.raises(ValueError, match="duration"):
            parse_schedule(bad)


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """`120` and an HTTP date both work; anything else is not honoured."""
    assert retry_after_seconds("120") == 120
    soon = (datetime.now(UTC) + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    seconds = retry_after_seconds(soon)
    assert seconds is not None
    assert 80 < seconds <= 90
    assert retry_after_seconds("tomorrow") is None
