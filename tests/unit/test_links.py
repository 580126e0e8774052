"""Signed links: valid until their expiry, and only for the path and expiry they were made
for, under the key they were made with."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from app.links import LinkCheck, check, link_key, sign
from app.security import callback_token

KEY = link_key("a-callback-secret-of-some-length")
PATH = "/v1/uploads/0b6c1c1e-4c55-4a70-9b0e-0d9f0c2f6f57/content"


def _parts(link: str) -> tuple[str, str | None, str | None]:
    split = urlsplit(link)
    query = {name: values[0] for name, values in parse_qs(split.query).items()}
    return split.path, query.get("expires"), query.get("signature")


def test_a_link_is_valid_until_it_expires() -> None:
    path, expires, signature = _parts(sign(KEY, PATH, 1_000))
    assert path == PATH
    assert check(KEY, path, expires, signature, now=999.5) is LinkCheck.VALID
    assert check(KEY, path, expires, signature, now=1_000) is LinkCheck.EXPIRED


@pytest.mark.parametrize(
    ("path", "expires", "signature"),
    [
        (PATH + "x", None, None),  # another path
        (PATH, "2000", None),  # a later expiry
        (PATH, None, "AAAA"),  # another signature
        (PATH, "-5", None),
        (PATH, "1e9", None),
        (PATH, "9" * 13, None),
    ],
)
def test_a_changed_link_is_invalid(path: str, expires: str | None, signature: str | None) -> None:
    _, good_expires, good_signature = _parts(sign(KEY, PATH, 1_000))
    assert (
        check(KEY, path, expires or good_expires, signature or good_signature, now=0)
        is LinkCheck.INVALID
    )


def test_missing_parts_are_invalid() -> None:
    _, expires, signature = _parts(sign(KEY, PATH, 1_000))
    assert check(KEY, PATH, None, signature, now=0) is LinkCheck.INVALID
    assert check(KEY, PATH, expires, None, now=0) is LinkCheck.INVALID
    assert check(KEY, PATH, "", signature, now=0) is LinkCheck.INVALID


def test_an_expired_forgery_reads_as_invalid() -> None:
    assert check(KEY, PATH, "10", "AAAA", now=1_000) is LinkCheck.INVALID


def test_another_secret_makes_other_links() -> None:
    _, expires, signature = _parts(sign(KEY, PATH, 1_000))
    other = link_key("another-callback-secret-of-length")
    assert check(other, PATH, expires, signature, now=0) is LinkCheck.INVALID


def test_a_link_key_is_not_the_callback_secret() -> None:
    secret = "a-callback-secret-of-some-length"
    assert link_key(secret) != secret.encode()
    assert callback_token(secret, uuid.UUID(int=0)) not in sign(KEY, PATH, 1)


@pytest.mark.parametrize("path", ["v1/x", "/v1/x?a=1", "/v1/x#f", "https://h/v1/x"])
def test_only_bare_absolute_paths_are_signed(path: str) -> None:
    with pytest.raises(ValueError, match="bare absolute path"):
        sign(KEY, path, 1)
