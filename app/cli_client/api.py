"""The REST calls the command-line client makes, on one `httpx.Client`.

Every answer that is not a success becomes an `ApiError` carrying the problem document
(RFC 9457) the API sent, or the bare status when the answer is not one (a proxy's page).
Transport failures are left as httpx's own errors: the commands turn them into one line.

Creating a task is the one call retried on its own: it carries an `Idempotency-Key`, so a
create whose answer was lost is sent again and answered with the task it made, never a
second one. Following a task reads its event stream (`GET /v1/tasks/{id}/stream`) and,
when the stream ends or breaks, asks once with `Prefer: wait` whether it is settled, then
resumes the stream from the last event it saw (`Last-Event-ID`).
"""

from __future__ import annotations

import json
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

# Long enough for a slow network, short enough that a dead server is said promptly.
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0
# The stream sends a keep-alive every 15 s by default; four missed ones mean a dead line.
STREAM_READ_TIMEOUT_SECONDS = 60.0
# How long one `Prefer: wait` asks the API to hold its answer once the stream has ended.
SETTLE_WAIT_SECONDS = 5
CREATE_ATTEMPTS = 3
CREATE_RETRY_DELAY_SECONDS = 1.0
# What a create is retried on: no answer, or an answer that says "try again".
RETRYABLE_STATUSES = frozenset({502, 503, 504})

Task = dict[str, Any]


class ApiError(Exception):
    """A non-success answer: its status and the problem document (or None)."""

    def __init__(self, status: int, problem: dict[str, Any] | None, url: str) -> None:
        self.status = status
        self.problem = problem
        self.url = url
        super().__init__(self.lines()[0])

    def lines(self) -> list[str]:
        """What to tell the person: the problem's title and detail, then each listed error."""
        problem = self.problem
        if problem is None:
            return [f"HTTP {self.status} from {self.url}, not a problem document"]
        title = str(problem.get("title") or f"HTTP {self.status}")
        detail = problem.get("detail")
        head = f"{title} ({self.status})" + (f": {detail}" if detail else "")
        listed = problem.get("errors")
        errors = listed if isinstance(listed, list) else []
        return [head] + [
            f"  {item.get('field', '?')}: {item.get('message', '')}"
            for item in errors
            if isinstance(item, dict)
        ]


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    problem: dict[str, Any] | None = None
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
        problem = body if isinstance(body, dict) else None
    raise ApiError(response.status_code, problem, str(response.request.url))


def _json(response: httpx.Response) -> Task:
    _raise_for(response)
    body: Task = response.json()
    return body


def content_type_of(path: Path) -> str:
    """The content type an upload declares, from its file name; the API decodes it anyway."""
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


class Api:
    """An authenticated client of one edithook."""

    def __init__(self, base_url: str, key: str, *, transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "edithook-cli"},
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def upload(self, path: Path) -> Task:
        """`POST /v1/uploads` with the file as the multipart field `file`."""
        with path.open("rb") as file:
            response = self.http.post(
                "/v1/uploads",
                files={"file": (path.name, file, content_type_of(path))},
                timeout=httpx.Timeout(120.0, connect=CONNECT_TIMEOUT_SECONDS),
            )
        return _json(response)

    def create_task(self, body: dict[str, Any], idempotency_key: str | None = None) -> Task:
        """`POST /v1/tasks`; sent again under the same key when no answer came or the API
        said to try again, so that one command makes one task."""
        key = idempotency_key or f"edithook-cli-{uuid.uuid4()}"
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            last = attempt == CREATE_ATTEMPTS
            try:
                response = self.http.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
            except (httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError):
                if last:
                    raise
            else:
                if response.status_code not in RETRYABLE_STATUSES or last:
                    return _json(response)
            time.sleep(CREATE_RETRY_DELAY_SECONDS * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_task(self, task_id: str) -> Task:
        return _json(self.http.get(f"/v1/tasks/{task_id}"))

    def wait_task(self, task_id: str, seconds: int) -> tuple[Task, bool]:
        """The task once settled (True) or after `seconds` (False), by `Prefer: wait`."""
        response = self.http.get(
            f"/v1/tasks/{task_id}",
            headers={"Prefer": f"wait={seconds}"},
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS + seconds, connect=CONNECT_TIMEOUT_SECONDS),
        )
        task = _json(response)
        return task, response.headers.get("Edithook-Wait") == "settled"

    def stream_task(self, task_id: str, last_event_id: str | None) -> Iterator[tuple[str, Task]]:
        """The stream's `task` events as (event id, task), until the API ends the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(STREAM_READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        with self.http.stream(
            "GET", f"/v1/tasks/{task_id}/stream", headers=headers, timeout=timeout
        ) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            for event, event_id, data in sse_events(response.iter_lines()):
                if event == "task" and data:
                    yield event_id, json.loads(data)

    def follow(self, task_id: str, on_change: Callable[[Task], None]) -> Task:
        """Call `on_change` with the task after each change, until it is settled; the
        settled task. A stream cut short (a restart, a dead line) is resumed."""
        last_event_id: str | None = None
        while True:
            try:
                for event_id, task in self.stream_task(task_id, last_event_id):
                    last_event_id = event_id or last_event_id
                    on_change(task)
            except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError):
                pass  # resumed below, from the last event seen
            task, settled = self.wait_task(task_id, SETTLE_WAIT_SECONDS)
            if settled:
                on_change(task)
                return task

    def list_tasks(self, statuses: list[str], limit: int, cursor: str | None) -> Task:
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("status", status) for status in statuses
        ]
        params.append(("limit", limit))
        if cursor:
            params.append(("cursor", cursor))
        return _json(self.http.get("/v1/tasks", params=params))

    def events(self, task_id: str) -> Task:
        """Every event of the task, oldest first, as one page (`next_cursor` null)."""
        items: list[Any] = []
        params: dict[str, str | int] = {"limit": 500}
        while True:
            page = _json(self.http.get(f"/v1/tasks/{task_id}/events", params=params))
            items.extend(page["items"])
            if not page.get("next_cursor"):
                return {"items": items, "next_cursor": None}
            params["cursor"] = page["next_cursor"]

    def results(self, task_id: str) -> Task:
        return _json(self.http.get(f"/v1/tasks/{task_id}/results"))

    def download(self, task_id: str, index: int, write: Callable[[bytes], object]) -> None:
        """The stored image's bytes, handed to `write` as they come."""
        with self.http.stream("GET", f"/v1/tasks/{task_id}/results/{index}") as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            for chunk in response.iter_bytes():
                write(chunk)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str, str]]:
    """Server-Sent Events as (event, id, data) from the stream's lines (the WHATWG rules
    for the fields the API sends: comments and unknown fields are skipped)."""
    event, event_id = "", ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event or "message", event_id, "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
