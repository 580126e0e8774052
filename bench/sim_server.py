"""The EvoLink simulator with the benchmark's timings, timing its own create calls.

`python -m bench.sim_server --port N` serves `create_simulator_app` with a task that is
processing at once and completes after `PROCESSING_SECONDS`; callbacks keep the provider's
real retry schedule. It also records how long the simulator itself spent on each
`POST /v1/images/generations` (from the request reaching the app to the last byte of the
answer leaving it), keyed by the provider task id it created, and serves them at
`GET /_bench/create-times` as `{provider_task_id: {"seconds": …, "received": …}}`: the part
of a worker's submit job that is the provider's own time, and when (Unix time, this
machine's clock) the request arrived, so the harness can tell the job's time before the
create from its time after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from evolink_simulator import SimulatorConfig, create_simulator_app

PROCESSING_SECONDS = 0.2
BENCH_SIMULATOR = SimulatorConfig(pending_seconds=0.0, processing_seconds=PROCESSING_SECONDS)
CREATE_PATH = "/v1/images/generations"
TIMES_PATH = "/_bench/create-times"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CreateTimer:
    """ASGI wrapper: times the wrapped app's create calls and serves the times it took."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.times: dict[str, dict[str, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == TIMES_PATH:
            body = json.dumps(self.times).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] != "POST" or scope["path"] != CREATE_PATH:
            await self.app(scope, receive, send)
            return
        received = time.time()
        started = time.perf_counter()
        chunks: list[bytes] = []

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    seconds = time.perf_counter() - started
                    self._record(b"".join(chunks), seconds, received)
            await send(message)

        await self.app(scope, receive, timed_send)

    def _record(self, body: bytes, seconds: float, received: float) -> None:
        try:
            task_id = json.loads(body).get("id")
        except (ValueError, AttributeError):
            return
        if isinstance(task_id, str):
            self.times[task_id] = {"seconds": seconds, "received": received}


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from app.logs import UVICORN_LOG_CONFIG, configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.sim_server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging("warning")
    app = CreateTimer(create_simulator_app(BENCH_SIMULATOR))
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_config=UVICORN_LOG_CONFIG, access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
