"""Signed, expiring links: a URL that needs no API key, only while its signature is valid.

EvoLink must fetch an uploaded input image, and a caller of the OpenAI-compatible endpoint
must fetch its results, without an edithook key. Such a link is an edithook path with
`expires` (Unix seconds) and `signature` (base64url HMAC-SHA256 of the path and the
expiry) in its query. The key is derived from `EDITHOOK_CALLBACK_SECRET` with a label of
its own, so a link's signature can never serve as a callback token, nor the reverse, and
there is no further secret to configure. Rotating the callback secret invalidates every
link, which is what rotating a secret should do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from enum import StrEnum
from urllib.parse import urlencode

_LABEL = b"edithook-links:v1"


def link_key(secret: str) -> bytes:
    """The key links are signed with, derived from the callback secret."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def _signature(key: bytes, path: str, expires: int) -> str:
    mac = hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def sign(key: bytes, path: str, expires: int) -> str:
    """`path` (absolute, starting with `/`, without a query) with the query that makes it
    valid until `expires` (Unix seconds)."""
    if not path.startswith("/") or "?" in path or "#" in path:
        raise ValueError(f"not a bare absolute path: {path!r}")
    query = urlencode({"expires": expires, "signature": _signature(key, path, expires)})
    return f"{path}?{query}"


class LinkCheck(StrEnum):
    """What a presented link is: the problem type a refusal names, or valid."""

    VALID = "valid"
    INVALID = "link-invalid"  # missing, malformed or wrong signature: not a link we made
    EXPIRED = "link-expired"  # ours, but past its expiry


def check(
    key: bytes, path: str, expires: str | None, signature: str | None, now: float
) -> LinkCheck:
    """Whether `path` with the query values `expires` and `signature` is a link signed with
    `key` and still valid at `now` (Unix seconds). The signature is compared in constant
    time, and before the expiry, so that an expired forgery reads as invalid."""
    if not expires or not signature or not expires.isdigit() or len(expires) > 12:
        return LinkCheck.INVALID
    when = int(expires)
    if not hmac.compare_digest(_signature(key, path, when).encode(), signature.encode()):
        return LinkCheck.INVALID
    return LinkCheck.VALID if now < when else LinkCheck.EXPIRED
