"""Caller authentication and per-task callback tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid


class ApiKeys:
    """Maps bearer keys to client names without keeping or comparing the keys themselves.

    Keys are looked up by their SHA-256 digest, so the time a lookup takes says nothing about
    how much of a guessed key was right.
    """

    def __init__(self, keys: dict[str, str]) -> None:
        self._clients = {_digest(key): client for key, client in keys.items()}

    def client_for(self, key: str) -> str | None:
        return self._clients.get(_digest(key))

    def __len__(self) -> int:
        return len(self._clients)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def callback_token(secret: str, task_id: uuid.UUID) -> str:
    """The secret that the task's callback URL carries: HMAC-SHA256 of the task id, base64url."""
    mac = hmac.new(secret.encode(), b"evolink-callback:" + task_id.bytes, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def token_matches(secret: str, task_id: uuid.UUID, token: str) -> bool:
    """Constant-time check of a callback URL's token."""
    return hmac.compare_digest(callback_token(secret, task_id).encode(), token.encode())


def callback_path(task_id: uuid.UUID, token: str) -> str:
    return f"/v1/callbacks/evolink/{task_id}/{token}"
