"""Caller authentication and per-task callback tokens, and keeping those tokens out of text."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import uuid

REDACTED = "[redacted]"


def key_digest(key: str) -> bytes:
    """The SHA-256 digest a key is stored and looked up by (docs/decisions.md says why)."""
    return hashlib.sha256(key.encode()).digest()


class AdminKeys:
    """The operators' keys of EDITHOOK_ADMIN_KEYS, held and compared only as digests.

    Looked up by digest, so the time a check takes says nothing about how much of a guessed
    key was right.
    """

    def __init__(self, keys: list[str]) -> None:
        self._digests = frozenset(key_digest(key) for key in keys)

    def accepts(self, key: str) -> bool:
        return key_digest(key) in self._digests

    def __len__(self) -> int:
        return len(self._digests)


def callback_token(secret: str, task_id: uuid.UUID) -> str:
    """The secret that the task's callback URL carries: HMAC-SHA256 of the task id, base64url."""
    mac = hmac.new(secret.encode(), b"evolink-callback:" + task_id.bytes, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def token_matches(secret: str, task_id: uuid.UUID, token: str) -> bool:
    """Constant-time check of a callback URL's token."""
    return hmac.compare_digest(callback_token(secret, task_id).encode(), token.encode())


def callback_path(task_id: uuid.UUID, token: str) -> str:
    return f"/v1/callbacks/evolink/{task_id}/{token}"


def scrub_token(text: str, token: str | None) -> str:
    """`text` with every form of the callback `token` replaced by REDACTED.

    The provider may quote our callback URL, raw or percent-encoded, or the token alone,
    in an error. A base64url token keeps its characters in all of those (they are all
    unreserved), and with `=` padding it still starts with them; its standard base64 twin
    (`+` and `/` for `-` and `_`) may be percent-encoded, once or more. All are matched.
    """
    if not token or not text:
        return text
    # Most texts hold no part of it: one substring search decides, before any regex.
    if _longest_plain_run(token) not in text:
        return text
    return _token_forms(token).sub(REDACTED, text)


def _longest_plain_run(token: str) -> str:
    return max(re.split(r"[-_]", token), key=len)


@functools.lru_cache(maxsize=1024)
def _token_forms(token: str) -> re.Pattern[str]:
    alternatives = {"-": r"(?:-|\+|%(?:25)*2[Bb])", "_": r"(?:_|/|%(?:25)*2[Ff])"}
    return re.compile("".join(alternatives.get(char, re.escape(char)) for char in token))
