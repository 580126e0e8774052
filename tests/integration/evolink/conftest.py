"""The simulator and a callback receiver, each on a real loopback port, with fast timings."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from app.servers import serving
from evolink_simulator import SimulatorConfig, create_simulator_app

API_KEY = "sk-evo-test-0123456789"
VALID_BODY: dict[str, Any] = {
    "model": "qwen-image-edit-plus",
    "prompt": "Replace the background with a snowy mountain range",
    "image_urls": ["https://cdn.example.com/in/abc123.png"],
}
FAST: dict[str, Any] = {
    "api_key": API_KEY,
    "pending_seconds": 0.05,
    "processing_seconds": 0.2,
    "callback_retry_delays": (0.05, 0.1, 0.2),
    "callback_timeout_seconds": 1.0,
}


@dataclass
class Sim:
    """A running simulator and an authenticated client for it, with the control calls."""

    url: str
    http: httpx.AsyncClient

    async def create(self, **fields: Any) -> dict[str, Any]:
        """Create a task from a valid body with `fields` changed; the 200 answer."""
        response = await self.http.post("/v1/images/generations", json={**VALID_BODY, **fields})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def get(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_for(self, task_id: str, *statuses: str, within: float = 5.0) -> dict[str, Any]:
        """Poll until the task reaches one of `statuses`; fail after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            task = await self.get(task_id)
            if task["status"] in statuses:
                return task
            assert time.monotonic() < deadline, f"{task_id} stayed {task['status']}"
            await asyncio.sleep(0.02)

    async def record(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/_sim/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def stats(self) -> dict[str, int]:
        body: dict[str, int] = (await self.http.get("/_sim/stats")).json()
        return body

    async def fault(self, **spec: Any) -> None:
        response = await self.http.post("/_sim/faults", json=spec)
        assert response.status_code == 200, response.text

    async def wait_for_callbacks(
        self, task_id: str, count: int, within: float = 5.0
    ) -> list[dict[str, Any]]:
        """The task's delivery attempts, once there are at least `count` of them."""
        deadline = time.monotonic() + within
        while True:
            attempts: list[dict[str, Any]] = (await self.record(task_id))["callbacks"]
            if len(attempts) >= count and all(
                a["status_code"] is not None or a["error"] is not None for a in attempts
            ):
                return attempts
            assert time.monotonic() < deadline, f"{len(attempts)} callback attempts"
            await asyncio.sleep(0.02)


SimFactory = Callable[..., Awaitable[Sim]]


def _starter(stack: AsyncExitStack) -> SimFactory:
    async def start(**overrides: Any) -> Sim:
        config = SimulatorConfig(**{**FAST, **overrides})
        server = await stack.enter_async_context(serving(create_simulator_app(config)))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
            )
        )
        return Sim(url=server.url, http=http)

    return start


@pytest.fixture
async def start_sim() -> AsyncIterator[SimFactory]:
    """Start simulators with FAST timings changed by keyword; all stop after the test."""
    async with AsyncExitStack() as stack:
        yield _starter(stack)


@pytest.fixture(scope="module")
async def shared_sims() -> AsyncIterator[dict[str, Sim]]:
    """One simulator per error envelope style, shared by a module's stateless checks."""
    async with AsyncExitStack() as stack:
        start = _starter(stack)
        yield {style: await start(error_code_style=style) for style in ("string", "integer")}


@pytest.fixture
async def sim(shared_sims: dict[str, Sim]) -> AsyncIterator[Sim]:
    """The module's simulator with FAST timings; faults a test leaves behind are cleared.

    Shared, so counters only ever grow: tests compare them before and after.
    """
    yield shared_sims["string"]
    await shared_sims["string"].http.delete("/_sim/faults")


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class CallbackSink:
    """Receives callbacks on `/hook/<test>/<name>`, shared by a module's tests.

    Each test sees only what arrived on its own hooks: `begin` starts a fresh view, so a
    retry still in flight from an earlier test cannot leak into the next one. A hook answers
    its queued `statuses[name]` in turn (then 200), each after `delays[name]` seconds.
    """

    url: str = ""
    test: str = ""
    statuses: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def begin(self) -> None:
        self.test = secrets.token_hex(4)
        self.statuses, self.delays, self.received = {}, {}, []

    def from_hook(self, name: str) -> list[Received]:
        return [r for r in self.received if r.path == name]

    def hook(self, name: str = "task") -> str:
        return f"{self.url}/hook/{self.test}/{name}"

    def build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook/{test}/{name:path}")
        async def receive(test: str, name: str, request: Request) -> Response:
            if test != self.test:
                return Response(status_code=410)  # an earlier test's straggler
            self.received.append(
                Received(
                    path=name,
                    body=await request.json(),
                    headers=dict(request.headers),
                    at=time.monotonic(),
                )
            )
            await asyncio.sleep(self.delays.get(name, 0.0))
            queued = self.statuses.get(name)
            status = queued.pop(0) if queued else 200
            headers = {"Location": f"{self.url}/elsewhere"} if 300 <= status < 400 else None
            return Response(status_code=status, headers=headers)

        return app

    async def wait_for(self, count: int, within: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} callbacks arrived"
            await asyncio.sleep(0.02)
        return self.received


@pytest.fixture(scope="module")
async def shared_sink() -> AsyncIterator[CallbackSink]:
    receiver = CallbackSink()
    async with serving(receiver.build()) as server:
        receiver.url = server.url
        yield receiver


@pytest.fixture
def sink(shared_sink: CallbackSink) -> CallbackSink:
    """A callback receiver on a loopback port, showing only this test's deliveries."""
    shared_sink.begin()
    return shared_sink


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CraftedProvider:
    """Answers every request with `status`/`body`/`headers`, and records what it was sent."""

    url: str = ""
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    seen: list[Seen] = field(default_factory=list)

    def build(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{rest:path}", methods=["GET", "POST"])
        async def answer(rest: str, request: Request) -> Response:
            self.seen.append(
                Seen(
                    method=request.method,
                    raw_path=request.scope["raw_path"].decode(),
                    headers=dict(request.headers),
                    body=await request.body(),
                )
            )
            return Response(self.body, self.status, headers=self.headers)

        return app


@pytest.fixture
async def crafted() -> AsyncIterator[CraftedProvider]:
    """A provider stand-in serving whatever answer the test sets."""
    provider = CraftedProvider()
    async with serving(provider.build()) as server:
        provider.url = server.url
        yield provider


@pytest.fixture
async def hangup_url() -> AsyncIterator[str]:
    """A server that reads a whole request and closes the connection without answering."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL whose port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
