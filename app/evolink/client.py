"""The one way edithook talks to EvoLink: create a task, get a task.

The client never retries: it says, through `EvoLinkError.outcome`, whether repeating the
call is safe, and callers decide. EvoLink has no idempotency key, so a create is only
"retryable" when the provider certainly did not act on it; when the request may have been
received (the answer was lost, or came back unreadable) the outcome is "ambiguous" and the
create must be settled by its callback or by polling, never by sending it again.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from app.evolink.schemas import (
    SCRUB,
    CreateRequest,
    ProviderErrorBody,
    ProviderTask,
    storable_text,
)
from app.security import scrub_token

logger = logging.getLogger("edithook.evolink")

Outcome = Literal["permanent", "retryable", "ambiguous"]

MAX_MESSAGE_CHARS = 500

# Failures where no byte of the request can have reached the provider.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Failures before connecting that repeating will not fix: a malformed base URL.
_CANNOT_SEND: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.InvalidURL)
# A gateway timeout means the origin got the request and did not answer in time: it may
# have created the task (Cloudflare reports the same as 524).
_GATEWAY_TIMEOUTS = frozenset({504, 524})
# "retry after 60 seconds", "Retry after 2 minutes", "retry after 30s"
_SUGGESTION = re.compile(
    r"retry\s+after\s+(\d+(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m)?\b", re.IGNORECASE
)


class EvoLinkError(Exception):
    """A call to EvoLink that did not produce a task object.

    `outcome` tells the caller what it may do: "retryable" — the provider certainly did not
    act, repeating is safe; "permanent" — repeating the same call will fail the same way;
    "ambiguous" — a create may or may not have been accepted. `status_code` is None when no
    HTTP answer arrived. `code` is the provider's `error.code` as a string (integer codes
    become e.g. "429"). `retry_after` is in seconds, from `Retry-After` or from the old
    envelope's `fallback_suggestion`.
    """

    def __init__(
        self,
        message: str,
        *,
        outcome: Outcome,
        status_code: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.outcome: Outcome = outcome
        self.status_code = status_code
        self.code = code
        self.error_type = error_type
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status_code}" if self.status_code is not None else "no response"
        code = f" {self.code}" if self.code else ""
        return f"{self.outcome} ({where}{code}): {self.message}"

    def __repr__(self) -> str:
        return f"EvoLinkError({self})"


def build_http_client(
    *, connect_timeout: float = 5.0, read_timeout: float = 30.0, **kw: Any
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for `EvoLinkClient`; the caller owns it and must close it.

    Redirects are not followed: a redirected API call is a misconfiguration, and following
    one would re-send the key elsewhere. Extra keyword arguments go to `httpx.AsyncClient`.
    """
    kw.setdefault(
        "timeout",
        httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
    )
    kw.setdefault("follow_redirects", False)
    return httpx.AsyncClient(**kw)


class EvoLinkClient:
    """Create and get `qwen-image-edit-plus` tasks; every failure is an `EvoLinkError`."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"EvoLinkClient({self._base_url!r})"  # never the key

    async def create_task(self, request: CreateRequest) -> ProviderTask:
        """POST {base}/v1/images/generations; the accepted task (normally `pending`).

        Raises EvoLinkError: connection failures before sending, 408, 429 and 5xx (except
        gateway timeouts) are retryable; other 3xx/4xx are permanent; a lost answer, a
        gateway timeout or an unreadable 2xx is ambiguous.
        """
        body = json.dumps(request.to_wire()).encode()
        url = f"{self._base_url}/v1/images/generations"
        hide = _token_of(request.callback_url)
        try:
            response = await self._http.post(url, content=body, headers=self._headers)
        except _NOT_SENT as exc:
            raise _transport_error(exc, "retryable") from exc
        except _CANNOT_SEND as exc:
            raise _transport_error(exc, "permanent") from exc
        except httpx.RequestError as exc:
            # Sent, or possibly sent: the answer was lost or could not be read.
            raise _transport_error(exc, "ambiguous") from exc
        logger.debug("create answered HTTP %s", response.status_code)
        if response.is_success:
            task = _task_or_none(response, hide)
            if task is None or not task.id:
                raise EvoLinkError(
                    f"create answered HTTP {response.status_code} without a task object: "
                    + _snippet(response.text, hide),
                    outcome="ambiguous",
                    status_code=response.status_code,
                )
            return task
        status = response.status_code
        outcome: Outcome
        if status in _GATEWAY_TIMEOUTS:
            outcome = "ambiguous"
        elif status in (408, 429) or status >= 500:
            outcome = "retryable"
        else:
            outcome = "permanent"
        raise _http_error(response, outcome, hide=hide)

    async def get_task(self, provider_task_id: str, *, hide: str | None = None) -> ProviderTask:
        """GET {base}/v1/tasks/{id}; the task as the provider sees it now.

        `hide` is the task's callback token: no form of it is left in what this returns or
        raises (a create hides the token of its `callback_url` the same way).

        Raises EvoLinkError: 4xx (including 404 `task_not_found`) is permanent except 408 and
        429; everything else (transport errors, 5xx, an unreadable 2xx) is retryable, since
        reading a task changes nothing.
        """
        if not provider_task_id:
            raise EvoLinkError("empty provider task id", outcome="permanent")
        url = f"{self._base_url}/v1/tasks/{quote(provider_task_id, safe='')}"
        try:
            response = await self._http.get(url, headers=self._headers)
        except _CANNOT_SEND as exc:
            raise _transport_error(exc, "permanent") from exc
        except httpx.RequestError as exc:
            raise _transport_error(exc, "retryable") from exc
        logger.debug("get answered HTTP %s", response.status_code)
        if response.is_success:
            task = _task_or_none(response, hide)
            if task is None:
                raise EvoLinkError(
                    f"get answered HTTP {response.status_code} without a task object: "
                    + _snippet(response.text, hide),
                    outcome="retryable",
                    status_code=response.status_code,
                )
            return task
        status = response.status_code
        retryable = status in (408, 429) or status >= 500
        raise _http_error(response, "retryable" if retryable else "permanent", hide=hide)


def _token_of(callback_url: str | None) -> str | None:
    """The secret in our callback URL: its last path segment (app.security.callback_path)."""
    return callback_url.rstrip("/").rsplit("/", 1)[-1] if callback_url else None


def _task_or_none(response: httpx.Response, hide: str | None) -> ProviderTask | None:
    try:
        return ProviderTask.model_validate_json(response.content, context={SCRUB: hide})
    except ValidationError:
        return None


def _transport_error(exc: Exception, outcome: Outcome) -> EvoLinkError:
    # str(exc) of a transport error names the host at most, never headers or the body.
    detail = str(exc) or "no detail"
    logger.info("EvoLink call failed before an answer: %s (%s)", type(exc).__name__, outcome)
    return EvoLinkError(f"{type(exc).__name__}: {detail}", outcome=outcome)


def _http_error(
    response: httpx.Response, outcome: Outcome, *, hide: str | None = None
) -> EvoLinkError:
    """An EvoLinkError from a non-2xx answer, with its envelope read as far as it goes."""
    error, message = _read_envelope(response, hide)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if retry_after is None and error is not None and error.fallback_suggestion:
        retry_after = parse_suggestion(error.fallback_suggestion)
    logger.info("EvoLink answered HTTP %s (%s)", response.status_code, outcome)
    return EvoLinkError(
        message,
        outcome=outcome,
        status_code=response.status_code,
        code=error.code_str if error is not None else None,
        error_type=error.type if error is not None else None,
        retry_after=retry_after,
    )


def _read_envelope(
    response: httpx.Response, hide: str | None
) -> tuple[ProviderErrorBody | None, str]:
    """The `error` object (if the body has one) and the best message the body offers, both
    without any form of the token `hide`."""
    fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    try:
        document = json.loads(response.content)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        return None, _snippet(response.text, hide) or fallback
    if isinstance(document, dict):
        raw = document.get("error")
        if isinstance(raw, dict):
            try:
                error = ProviderErrorBody.model_validate(raw, context={SCRUB: hide})
            except ValidationError:
                error = None
            if error is not None:
                return error, _snippet(error.message or "", hide) or error.code_str or fallback
        if isinstance(raw, str) and raw:
            return None, _snippet(raw, hide)
        for key in ("message", "detail", "msg"):
            if isinstance(document.get(key), str) and document[key]:
                return None, _snippet(document[key], hide)
    return None, _snippet(response.text, hide) or fallback


def _snippet(text: str, hide: str | None) -> str:
    """`text` as a message we may store, log and show: without any form of the token `hide`
    (scrubbed before cutting, so no piece of it survives either), storable, bounded."""
    text = storable_text(scrub_token(text, hide)).strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date); None if unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP-dates are GMT by definition
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_suggestion(text: str) -> float | None:
    """Seconds from a `fallback_suggestion` such as "retry after 60 seconds"; None if absent."""
    match = _SUGGESTION.search(text)
    if match is None:
        return None
    seconds = float(match.group(1))
    unit = (match.group(2) or "s").lower()
    return seconds * 60 if unit.startswith("m") else seconds
