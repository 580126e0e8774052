"""The simulator's memory: tasks and their lifecycles, counters, injected faults, callbacks."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import string
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from evolink_simulator.config import SimulatorConfig
from evolink_simulator.inputs import InputFetch, fetch_input
from evolink_simulator.validation import MODEL, Edit

logger = logging.getLogger("edithook.simulator")

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_PROGRESS_STEPS = 8

# Task-level failures, as the provider's Error Codes page words them (paraphrased).
FAILURE_MESSAGES: dict[str, str] = {
    "content_policy_violation": "Content policy violation.\nChange the prompt or the images.",
    "invalid_parameters": "Invalid parameters.\nCheck the prompt length and the images.",
    "image_processing_error": "The input image could not be fetched or decoded.",
    "request_cancelled": "The request was cancelled.",
    "generation_failed_no_content": "The model returned no content.",
    "service_error": "Transient upstream error, retry after 30-60 seconds.",
    "generation_timeout": "Generation timed out, retry later.",
    "resource_exhausted": "Upstream capacity exhausted, retry after 1-5 minutes.",
    "quota_exceeded": "Rate, concurrency or quota limit reached.",
    "service_unavailable": "Service unavailable, retry after a few minutes.",
    "unknown_error": "Unknown error; contact support with the task id.",
}


class Fault(BaseModel):
    """A misbehaviour for the next `times` calls to `endpoint`.

    mode "status": answer `status` with an error envelope (or the raw `body`), with a
    `Retry-After` header when `retry_after` is set (a number, or a string sent verbatim,
    e.g. an HTTP-date). mode "accept_then_hang": do the real work (a create creates its
    task), then hold the answer back for `hang_seconds` or until the caller gives up.

    `message` and `body` may quote the caller's callback URL, as a careless provider might:
    `{callback_url}`, `{callback_url_encoded}` (percent-encoded) and `{callback_token}` (its
    last path segment) become those of the create request, or of the task a get names.
    """

    endpoint: Literal["create", "get"]
    mode: Literal["status", "accept_then_hang"] = "status"
    status: int = Field(default=500, ge=200, le=599)
    retry_after: float | str | None = None
    code: str | int | None = None
    message: str | None = None
    type: str | None = None
    param: str | None = None
    fallback_suggestion: str | None = None
    body: str | None = None
    content_type: str = "application/json"
    hang_seconds: float = Field(default=30.0, ge=0)
    times: int = Field(default=1, ge=1)

    def quoting(self, callback_url: str | None) -> Fault:
        """This fault with the callback URL placeholders in `message` and `body` filled in."""
        url = callback_url or ""
        values = {
            "{callback_url}": url,
            "{callback_url_encoded}": quote(url, safe=""),
            "{callback_token}": url.rstrip("/").rsplit("/", 1)[-1],
        }

        def fill(text: str | None) -> str | None:
            if text is None:
                return None
            for placeholder, value in values.items():
                text = text.replace(placeholder, value)
            return text

        return self.model_copy(update={"message": fill(self.message), "body": fill(self.body)})


@dataclass
class Delivery:
    attempt: int
    status_code: int | None
    error: str | None
    at: float


@dataclass
class SimTask:
    """One task, as the simulator keeps it."""

    id: str
    created: int
    edit: Edit
    base_url: str
    created_at: float = field(default_factory=time.monotonic)
    status: str = "pending"
    progress: int = 0
    results: list[str] | None = None
    error: dict[str, str] | None = None
    finished_at: float | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    inputs: list[InputFetch] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def size(self) -> tuple[int, int] | None:
        return self.edit.size


class Simulator:
    """All state of one simulator app; background work lives and dies with its lifespan."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.tasks: dict[str, SimTask] = {}
        self.faults: list[Fault] = []
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "create_requests",
                "creates",
                "gets",
                "file_downloads",
                "callbacks_sent",
                "callbacks_delivered",
                "input_fetches",
                "sample_downloads",
            ),
            0,
        )
        self.http: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._lifecycles: dict[str, asyncio.Task[None]] = {}

    # -- lifespan ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.http = httpx.AsyncClient(follow_redirects=False)

    async def stop(self) -> None:
        """Cancel every lifecycle and callback still running, then close the HTTP client."""
        while self._background:  # a finishing lifecycle may have just spawned a callback
            pending = list(self._background)
            for task in pending:
                task.cancel()
            # Not `await task` one by one: a task that is already done returns at once without
            # yielding, so the callback that drops it from `_background` never ran and this
            # loop spun forever, stopping the process's shutdown with a core at 100 %.
            await asyncio.gather(*pending, return_exceptions=True)
            self._background.difference_update(pending)
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- faults -----------------------------------------------------------------------------

    def take_fault(self, endpoint: Literal["create", "get"]) -> Fault | None:
        """The fault to apply to this call, counting it down; None for normal service."""
        for fault in self.faults:
            if fault.endpoint == endpoint:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    # -- tasks ------------------------------------------------------------------------------

    def create(self, edit: Edit, base_url: str) -> SimTask:
        """Register a new pending task and start its lifecycle."""
        if self.http is None:
            # Without the lifespan nothing would deliver callbacks or cancel the lifecycle.
            raise RuntimeError("the simulator's lifespan has not started (serve it with uvicorn)")
        created = int(time.time())
        suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(8))
        task = SimTask(
            id=f"task-unified-{created}-{suffix}",
            created=created,
            edit=edit,
            base_url=base_url.rstrip("/"),
        )
        self.tasks[task.id] = task
        self.stats["creates"] += 1
        self._lifecycles[task.id] = self._spawn(self._run(task))
        return task

    def lookup(self, task_id: str) -> SimTask | None:
        """The task, unless unknown or past `task_retention_seconds`."""
        task = self.tasks.get(task_id)
        retention = self.config.task_retention_seconds
        if (
            task is not None
            and retention is not None
            and time.monotonic() - task.created_at > retention
        ):
            return None
        return task

    def _processing_seconds(self, task: SimTask) -> float:
        slow = task.edit.directives.slow
        return self.config.processing_seconds if slow is None else slow

    async def _run(self, task: SimTask) -> None:
        """pending → processing (progress 10 → 90) → the outcome the prompt asked for."""
        await asyncio.sleep(self.config.pending_seconds)
        if task.terminal:
            return
        task.status, task.progress = "processing", 10
        if self.config.fetch_inputs and not await self._fetch_inputs(task):
            return
        step = self._processing_seconds(task) / _PROGRESS_STEPS
        for i in range(1, _PROGRESS_STEPS + 1):
            await asyncio.sleep(step)
            if task.terminal:
                return
            task.progress = 10 + 80 * i // _PROGRESS_STEPS
        directives = task.edit.directives
        if directives.hold:
            return  # stays processing until a /_sim/ control ends it
        if directives.fail:
            self.fail(task, directives.fail)
        elif directives.cancel:
            self.cancel(task, "status")
        elif directives.cancel_as_failed:
            self.cancel(task, "failed")
        else:
            self.complete(task)

    async def _fetch_inputs(self, task: SimTask) -> bool:
        """Fetch every input image, as EvoLink does before it edits; False when the task
        ended meanwhile or failed over an image it could not use."""
        for index, url in enumerate(task.edit.image_urls):
            fetched = await fetch_input(
                self._client(),
                url,
                task.base_url,
                seconds=self.config.input_timeout_seconds,
                max_bytes=self.config.input_max_bytes,
            )
            task.inputs.append(fetched)
            self.stats["input_fetches"] += 1
            if task.terminal:
                return False
            if fetched.code is not None:
                logger.info("input %d of %s unusable: %s", index, task.id, fetched.error)
                base = FAILURE_MESSAGES.get(fetched.code, "The input image cannot be used.")
                self.fail(task, fetched.code, f"{base} Image {index + 1}: {fetched.error}.")
                return False
        return True

    def complete(self, task: SimTask) -> bool:
        """End the task completed with its result URLs; False if it had already ended."""
        if task.terminal:
            return False
        count = task.edit.n
        if task.edit.directives.results is not None:
            count = min(count, task.edit.directives.results)
        base = (self.config.public_base_url or task.base_url).rstrip("/")
        task.results = [f"{base}/files/{task.id}/{index}.png" for index in range(count)]
        task.progress = 100
        return self._finish(task, "completed")

    def fail(self, task: SimTask, code: str, message: str | None = None) -> bool:
        if task.terminal:
            return False
        task.error = {
            "code": code,
            "message": message or FAILURE_MESSAGES.get(code, f"Task failed: {code}"),
            "type": "task_error",
        }
        return self._finish(task, "failed")

    def cancel(self, task: SimTask, form: Literal["status", "failed"]) -> bool:
        """Cancel in either form the provider may use: `cancelled` or failed + request_cancelled."""
        if form == "failed":
            return self.fail(task, "request_cancelled")
        if task.terminal:
            return False
        return self._finish(task, "cancelled")

    def _finish(self, task: SimTask, status: str) -> bool:
        task.status = status
        task.finished_at = time.monotonic()
        lifecycle = self._lifecycles.pop(task.id, None)
        if lifecycle is not None and lifecycle is not asyncio.current_task():
            lifecycle.cancel()
        if (
            task.edit.callback_url
            and self.config.callbacks_enabled
            and not task.edit.directives.no_callback
        ):
            self._spawn(self._deliver(task, task.edit.callback_url))
        return True

    def result_alive(self, task: SimTask) -> bool:
        return (
            task.finished_at is not None
            and time.monotonic() - task.finished_at <= self.config.result_ttl_seconds
        )

    # -- views ------------------------------------------------------------------------------

    def view(self, task: SimTask) -> dict[str, Any]:
        """The task object exactly as `GET /v1/tasks/{id}` (and the callback) carries it."""
        body: dict[str, Any] = {
            "created": task.created,
            "id": task.id,
            "model": MODEL,
            "object": "image.generation.task",
            "progress": task.progress,
            "status": task.status,
            "task_info": {"can_cancel": not task.terminal},
            "type": "image",
            "usage": {
                "billing_rule": "per_call",
                "credits_reserved": task.edit.n,
                "user_group": "default",
            },
        }
        if not task.terminal:
            total = self.config.pending_seconds + self._processing_seconds(task)
            elapsed = time.monotonic() - task.created_at
            body["task_info"]["estimated_time"] = max(0, math.ceil(total - elapsed))
        if task.results is not None:
            body["results"] = list(task.results)
        if task.error is not None:
            body["error"] = dict(task.error)
        return body

    def record(self, task: SimTask) -> dict[str, Any]:
        """The internal record `/_sim/tasks/{id}` shows: the view, the request, deliveries."""
        edit = task.edit
        return {
            "task": self.view(task),
            "request": {
                "prompt": edit.prompt,
                "image_urls": edit.image_urls,
                "n": edit.n,
                "size": f"{edit.size[0]}x{edit.size[1]}" if edit.size else None,
                "seed": edit.seed,
                "callback_url": edit.callback_url,
            },
            "directives": asdict(edit.directives),
            "callbacks": [asdict(delivery) for delivery in task.deliveries],
            "inputs": [asdict(fetched) for fetched in task.inputs],
        }

    # -- callbacks --------------------------------------------------------------------------

    async def _deliver(self, task: SimTask, url: str) -> None:
        """POST the task object until a 2xx: first attempt, then one retry after each delay."""
        config = self.config
        if config.callback_delay_seconds > 0:
            await asyncio.sleep(config.callback_delay_seconds)
        delays = (0.0, *config.callback_retry_delays)
        for attempt, delay in enumerate(delays, start=1):
            if delay > 0:
                await asyncio.sleep(delay)
            delivery = Delivery(attempt=attempt, status_code=None, error=None, at=time.time())
            task.deliveries.append(delivery)
            self.stats["callbacks_sent"] += 1
            try:
                # The documented 10 s is for the whole attempt, not per network phase.
                async with asyncio.timeout(config.callback_timeout_seconds):
                    response = await self._client().post(
                        url,
                        content=json.dumps(self.view(task)).encode(),
                        headers={"Content-Type": "application/json"},
                        timeout=config.callback_timeout_seconds,
                    )
            except (TimeoutError, httpx.TimeoutException):
                delivery.error = "timeout"
            except httpx.HTTPError as exc:
                delivery.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                delivery.status_code = response.status_code
            # The task id names the delivery; the URL would leak the receiver's token.
            outcome = delivery.error or f"HTTP {delivery.status_code}"
            logger.info("callback for %s, attempt %d: %s", task.id, attempt, outcome)
            if delivery.status_code is not None and 200 <= delivery.status_code < 300:
                self.stats["callbacks_delivered"] += 1
                return

    def _client(self) -> httpx.AsyncClient:
        if self.http is None:
            raise RuntimeError("the simulator's lifespan has ended")
        return self.http
