"""The one outbound call to callers: POST a signed message to the address that was checked.

The URL is judged again at connect time (`app.webhooks.targets.Rule.addresses`) and the
request goes to one of those checked addresses, with the real name kept for `Host` and TLS
(as `app.results.fetch` does). Redirects are not followed: a 3xx is a failed attempt. The
whole attempt, answer included, is bounded by `seconds`; the answer's first 1 KB is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from app.urls import UrlRefused, pinned
from app.webhooks.targets import Rule

KEPT_BYTES: Final = 1024
MAX_ADDRESSES_TRIED: Final = 4


@dataclass(frozen=True)
class Answer:
    """What one attempt met: an HTTP status (and its first 1 KB and Retry-After), or an error."""

    status_code: int | None
    body: str | None
    error: str | None
    latency_ms: int
    retry_after: str | None = None

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    http: httpx.AsyncClient,
    rule: Rule,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    seconds: float,
) -> Answer:
    """POST `body` to `url` once (trying up to 4 of its checked addresses to connect)."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        async with asyncio.timeout(seconds):
            target, addresses = await rule.addresses(url)
            parsed = httpx.URL(url)
            last: Exception | None = None
            for address in addresses[:MAX_ADDRESSES_TRIED]:
                aimed, extra, extensions = pinned(parsed, target, address)
                try:
                    return await _send(
                        http, aimed, body, {**headers, **extra}, extensions, seconds, elapsed
                    )
                except httpx.ConnectError as exc:
                    last = exc
            raise last or httpx.ConnectError("no address")
    except UrlRefused as exc:
        return Answer(None, None, f"the URL is refused: it {exc}", elapsed())
    except TimeoutError:
        return Answer(None, None, f"no answer within {seconds:g} s", elapsed())
    except httpx.TimeoutException:
        return Answer(None, None, f"no answer within {seconds:g} s", elapsed())
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        text = str(exc)
        return Answer(
            None, None, f"{type(exc).__name__}: {text}" if text else type(exc).__name__, elapsed()
        )


async def _send(
    http: httpx.AsyncClient,
    url: httpx.URL,
    body: bytes,
    headers: dict[str, str],
    extensions: dict[str, Any],
    seconds: float,
    elapsed: Callable[[], int],
) -> Answer:
    headers = {**headers, "Content-Type": "application/json", "User-Agent": "edithook-webhooks"}
    async with http.stream(
        "POST",
        url,
        content=body,
        headers=headers,
        extensions=extensions,
        follow_redirects=False,
        timeout=httpx.Timeout(seconds),
    ) as response:
        kept = bytearray()
        async for chunk in response.aiter_raw():
            kept += chunk
            if len(kept) >= KEPT_BYTES:
                break
        return Answer(
            response.status_code,
            bytes(kept[:KEPT_BYTES]).decode("utf-8", errors="replace"),
            None,
            elapsed(),
            response.headers.get("retry-after"),
        )
