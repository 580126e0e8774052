"""The simulator's HTTP face: EvoLink's endpoints, result files, and `/_sim/` controls."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from evolink_simulator.config import SimulatorConfig
from evolink_simulator.errors import error_response
from evolink_simulator.images import DEFAULT_SIZE, colour_for, render_png
from evolink_simulator.inputs import sample_image
from evolink_simulator.state import Fault, SimTask, Simulator
from evolink_simulator.validation import Invalid, validate_create

_DISCONNECT_POLL_SECONDS = 0.05


class FailBody(BaseModel):
    code: str = "service_error"
    message: str | None = None


class CancelBody(BaseModel):
    form: Literal["status", "failed"] = "status"


def create_simulator_app(config: SimulatorConfig | None = None) -> FastAPI:
    """A fake EvoLink as an ASGI app; serve it with uvicorn (its lifespan must run)."""
    sim = Simulator(config or SimulatorConfig())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    app = FastAPI(title="EvoLink simulator", lifespan=lifespan)
    app.state.simulator = sim
    style = sim.config.error_code_style
    insecure_callbacks = sim.config.allow_insecure_callbacks

    def error(status: int, message: str | None = None, **fields: Any) -> JSONResponse:
        return error_response(status, message, style=style, **fields)

    def string_code(code: str) -> str | None:
        """`code` in the current envelope; None lets the older one use the HTTP status."""
        return code if style == "string" else None

    def unauthorized(request: Request) -> JSONResponse | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        expected = sim.config.api_key
        if scheme.lower() != "bearer" or not key:
            return error(401, "Missing or malformed Authorization header (Bearer <key>)")
        if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
            return error(401, "Invalid or expired token")
        return None

    def fault_response(fault: Fault) -> Response:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            value = fault.retry_after
            headers["Retry-After"] = (
                str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
            )
        if fault.body is not None:
            return Response(
                fault.body, fault.status, headers=headers, media_type=fault.content_type
            )
        suggestion = fault.fallback_suggestion
        if suggestion is None and style == "integer" and isinstance(fault.retry_after, float):
            suggestion = f"retry after {int(fault.retry_after)} seconds"
        return error_response(
            fault.status,
            fault.message,
            style=style,
            headers=headers,
            code=fault.code,
            error_type=fault.type,
            param=fault.param,
            fallback_suggestion=suggestion,
        )

    async def hang(request: Request, seconds: float) -> None:
        """Wait `seconds`, or less if the caller hangs up (so a server can stop promptly)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if await request.is_disconnected():
                return
            await asyncio.sleep(min(_DISCONNECT_POLL_SECONDS, deadline - loop.time()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.post("/v1/images/generations")
    async def create_generation(request: Request) -> Response:
        sim.stats["create_requests"] += 1
        if (refused := unauthorized(request)) is not None:
            return refused
        fault = sim.take_fault("create")
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if fault is not None and fault.mode == "status":
            quoted = body.get("callback_url") if isinstance(body, dict) else None
            return fault_response(fault.quoting(quoted if isinstance(quoted, str) else None))
        if body is None:
            return error(400, "request body must be valid JSON")
        try:
            edit = validate_create(body, allow_insecure_callbacks=insecure_callbacks)
        except Invalid as exc:
            param = exc.param if style == "integer" else None
            return error(400, exc.message, param=param)
        task = sim.create(edit, str(request.base_url))
        answer = sim.view(task)
        if fault is not None:  # accept_then_hang: the task exists, the answer is late
            await hang(request, fault.hang_seconds)
        return JSONResponse(answer)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str, request: Request) -> Response:
        sim.stats["gets"] += 1
        if (refused := unauthorized(request)) is not None:
            return refused
        fault = sim.take_fault("get")
        if fault is not None and fault.mode == "status":
            named = sim.tasks.get(task_id)
            return fault_response(fault.quoting(named.edit.callback_url if named else None))
        if not task_id.startswith("task-unified-"):
            return error(
                400,
                "Invalid task id: it must start with 'task-unified-'",
                code=string_code("invalid_task_id"),
                param="task_id",
            )
        task = sim.lookup(task_id)
        if task is None:
            return error(
                404,
                "Task not found or expired",
                code=string_code("task_not_found"),
            )
        answer = sim.view(task)
        if fault is not None:
            await hang(request, fault.hang_seconds)
        return JSONResponse(answer)

    @app.get("/files/{task_id}/{index:int}.png")
    async def get_file(task_id: str, index: int) -> Response:
        sim.stats["file_downloads"] += 1
        task = sim.tasks.get(task_id)
        if task is None or task.results is None or not 0 <= index < len(task.results):
            return error(404, "File not found", code=string_code("file_not_found"))
        if not sim.result_alive(task):
            return error(404, "File expired", code=string_code("file_expired"))
        width, height = task.size or DEFAULT_SIZE
        colour = colour_for(task.edit.seed, task.id, index)
        png = await asyncio.to_thread(render_png, width, height, colour)
        return Response(png, media_type="image/png")

    @app.get("/inputs/{name:path}")
    async def get_sample_input(name: str) -> Response:
        """A sample input image, standing in for the reserved example domains' hosts
        (`evolink_simulator.inputs`): its type from the extension, `WxH` in the name its size."""
        sim.stats["sample_downloads"] += 1
        sample = await asyncio.to_thread(sample_image, name)
        if sample is None:
            return error(404, "File not found", code=string_code("file_not_found"))
        data, content_type = sample
        return Response(data, media_type=content_type)

    # -- controls for tests and curl users ----------------------------------------------------

    def known(task_id: str) -> SimTask | None:
        return sim.tasks.get(task_id)

    def missing() -> JSONResponse:
        return error(404, "Task not found", code=string_code("task_not_found"))

    @app.get("/_sim/tasks")
    async def list_sim_tasks() -> list[dict[str, Any]]:
        """Every task, oldest first, as its internal record."""
        return [sim.record(task) for task in sim.tasks.values()]

    @app.get("/_sim/tasks/{task_id}")
    async def get_sim_task(task_id: str) -> Response:
        """The internal record: the task object, the request, directives, callback deliveries."""
        task = known(task_id)
        return missing() if task is None else JSONResponse(sim.record(task))

    @app.post("/_sim/tasks/{task_id}/complete")
    async def complete_sim_task(task_id: str) -> Response:
        """End the task completed now (no-op if already terminal); answers the task object."""
        task = known(task_id)
        if task is None:
            return missing()
        sim.complete(task)
        return JSONResponse(sim.view(task))

    @app.post("/_sim/tasks/{task_id}/fail")
    async def fail_sim_task(task_id: str, body: FailBody | None = None) -> Response:
        """End the task failed now with `code`/`message` (no-op if already terminal)."""
        task = known(task_id)
        if task is None:
            return missing()
        body = body or FailBody()
        sim.fail(task, body.code, body.message)
        return JSONResponse(sim.view(task))

    @app.post("/_sim/tasks/{task_id}/cancel")
    async def cancel_sim_task(task_id: str, body: CancelBody | None = None) -> Response:
        """Cancel now: `form` "status" → `cancelled`; "failed" → failed + request_cancelled."""
        task = known(task_id)
        if task is None:
            return missing()
        sim.cancel(task, (body or CancelBody()).form)
        return JSONResponse(sim.view(task))

    @app.get("/_sim/stats")
    async def get_sim_stats() -> dict[str, int]:
        """Counters: create_requests, creates (tasks made), gets, file_downloads, callbacks."""
        return dict(sim.stats)

    @app.get("/_sim/faults")
    async def list_sim_faults() -> list[dict[str, Any]]:
        return [fault.model_dump() for fault in sim.faults]

    @app.post("/_sim/faults")
    async def add_sim_fault(fault: Fault) -> dict[str, Any]:
        """Queue a fault for the next `times` calls to `endpoint` (see `Fault`)."""
        sim.faults.append(fault)
        return fault.model_dump()

    @app.delete("/_sim/faults", status_code=204)
    async def clear_sim_faults() -> None:
        sim.faults.clear()

    return app
