"""The window arithmetic and the IETF draft's fields, without a database."""

from __future__ import annotations

from app.clients.ratelimit import WINDOW_SECONDS, Quota, quota_from


def test_the_fields_follow_the_draft_syntax() -> None:
    """`RateLimit-Policy: "default";q=<limit>;w=60` and `RateLimit: "default";r=…;t=…`."""
    fields = Quota(limit=60, used=48, reset=40).headers()
    assert fields == {
        "RateLimit-Policy": '"default";q=60;w=60',
        "RateLimit": '"default";r=12;t=40',
    }


def test_a_refusal_says_when_to_retry_and_nothing_remains() -> None:
    """Past the limit: 0 remaining, and `Retry-After` is the window's reset."""
    quota = Quota(limit=5, used=6, reset=17)
    assert not quota.allowed
    assert quota.remaining == 0
    assert quota.headers()["Retry-After"] == "17"
    assert quota.headers()["RateLimit"] == '"default";r=0;t=17'


def test_the_last_request_of_the_quota_is_allowed() -> None:
    quota = Quota(limit=5, used=5, reset=3)
    assert quota.allowed
    assert quota.remaining == 0
    assert "Retry-After" not in quota.headers()


def test_the_reset_is_rounded_up_and_kept_within_the_window() -> None:
    """A window begun 20.5 s ago resets in 40 s (39.5 up); one begun just now in the whole
    window; one seen as begun in the future (after a wait on its row) never past it; one at
    its very end in at least a second."""
    assert quota_from(10, 1, -20.5).reset == 40
    assert quota_from(10, 1, 0.0).reset == WINDOW_SECONDS
    assert quota_from(10, 1, 0.3).reset == WINDOW_SECONDS
    assert quota_from(10, 1, -59.999).reset == 1
    assert quota_from(10, 1, -60.0).reset == 1


def test_the_window_in_the_statement_is_the_window_in_the_fields() -> None:
    """The SQL spells the window as a literal; it must be the one the fields announce."""
    from app.clients.ratelimit import COUNT

    assert COUNT.count(f"interval '{WINDOW_SECONDS} seconds'") == 2
