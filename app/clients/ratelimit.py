"""Requests per minute per client: one fixed window per client, counted in Postgres.

A client with `requests_per_minute` has one row in the UNLOGGED table `rate_limit_windows`:
when its current window started and how many requests it has counted. One statement on the
direct pool (`COUNT`) counts a request and answers whether it fits: it starts a new window
when the last one is over (60 s after its first request), else adds one to the count, which
stops at the limit + 1 so that refused requests do not push the reset further away. The
row lock of that one upsert is what makes the count exact across any number of API
replicas; the clock is Postgres's, the same for all of them.

A client without a limit costs nothing here: its key's entry says so, and no statement runs.
When the statement cannot run (no connection, Postgres down) the request is let through
unlimited, with one warning per outage: refusing every limited client's every request
because the counter is unreachable would turn a database hiccup into an outage of the API,
while the requests that need the database fail on their own anyway.

What a caller sees follows the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "default";q=<limit>;w=60` and
`RateLimit: "default";r=<remaining>;t=<seconds to reset>` on every counted answer, and a
429 `rate-limited` problem with `Retry-After` when the window is spent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from app.db import DirectUnavailable, fetch_one

logger = logging.getLogger("edithook.ratelimit")

# The window of `requests_per_minute`; the statement below spells it out too (as a literal,
# so that its text is one prepared statement).
WINDOW_SECONDS = 60
POLICY = "default"

# `now()` is the statement's start: one instant for the whole statement. A window is over
# once WINDOW_SECONDS have passed since its first request.
COUNT = """
INSERT INTO rate_limit_windows AS w (client, started_at, used)
VALUES (%(client)s, now(), 1)
ON CONFLICT (client) DO UPDATE SET
    started_at = CASE WHEN w.started_at <= now() - interval '60 seconds'
                      THEN now() ELSE w.started_at END,
    used = CASE WHEN w.started_at <= now() - interval '60 seconds'
                THEN 1 ELSE least(w.used + 1, %(limit)s::integer + 1) END
RETURNING used, extract(epoch FROM started_at - now())::float8
"""


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a client stands in its window after this request was counted."""

    limit: int
    # Requests counted in the window, this one included (at most limit + 1).
    used: int
    # Whole seconds until the window ends and the count starts again (1 … WINDOW_SECONDS).
    reset: int

    @property
    def allowed(self) -> bool:
        return self.used <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def headers(self) -> dict[str, str]:
        """The draft's two fields, and on a refusal `Retry-After`."""
        fields = {
            "RateLimit-Policy": f'"{POLICY}";q={self.limit};w={WINDOW_SECONDS}',
            "RateLimit": f'"{POLICY}";r={self.remaining};t={self.reset}',
        }
        if not self.allowed:
            fields["Retry-After"] = str(self.reset)
        return fields


def quota_from(limit: int, used: int, started_offset: float) -> Quota:
    """The Quota for a count `used` in a window that started `started_offset` seconds from
    now (zero or negative: in the past). The reset is rounded up to whole seconds, so a
    caller that waits that long finds a new window, and kept within 1 … WINDOW_SECONDS (a
    statement that waited on the row lock may see a window that started after its `now()`)."""
    left = math.ceil(WINDOW_SECONDS + started_offset)
    return Quota(limit=limit, used=used, reset=min(WINDOW_SECONDS, max(1, left)))


class RateLimiter:
    """Counts limited clients' requests on the direct pool; lets them through when it cannot."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._failing = False

    async def count(self, client: str, limit: int) -> Quota | None:
        """Count one request of `client`, whose limit is `limit` a minute; None when the count
        could not be taken (the request then goes on unlimited)."""
        try:
            row = await fetch_one(self._pool, COUNT, {"client": client, "limit": limit})
        except (DirectUnavailable, psycopg.Error) as exc:
            if not self._failing:
                logger.warning(
                    "counting requests failed (%s); letting limited clients through unlimited",
                    type(exc).__name__,
                )
            self._failing = True
            return None
        if self._failing:
            logger.info("counting requests again")
            self._failing = False
        assert row is not None  # an upsert with RETURNING always returns its row
        used, offset = row
        return quota_from(limit, int(used), float(offset))
