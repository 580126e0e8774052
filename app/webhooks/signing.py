"""Webhook secrets and signatures, by the Standard Webhooks rules and its own library.

A secret is `whsec_` + base64 of 32 random bytes. After a rotation the previous secret
keeps signing for `OVERLAP`: `webhook-signature` then carries one signature per secret,
so a receiver that still holds the old one verifies every message meanwhile.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Final

from standardwebhooks import Webhook

from app.models.webhook import Secrets

PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
OVERLAP: Final = timedelta(hours=24)


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def rotate(holder: Secrets, now: datetime) -> str:
    """Give `holder` a new secret; the current one keeps signing until `now + OVERLAP`."""
    holder.previous_secret = holder.secret
    holder.previous_until = now + OVERLAP
    holder.secret = new_secret()
    return holder.secret


def signing_secrets(
    secret: str, previous: str | None, previous_until: datetime | None, now: datetime
) -> list[str]:
    """The secrets that sign a message sent at `now`: the current one, and the previous one
    while its overlap lasts."""
    keys = [secret]
    if previous and previous_until is not None and now < previous_until:
        keys.append(previous)
    return keys


def headers(message_id: str, body: str, keys: list[str], now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: id, timestamp, and every signature."""
    timestamp = now.astimezone(UTC)
    signatures = [Webhook(key).sign(message_id, timestamp, body) for key in keys]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
