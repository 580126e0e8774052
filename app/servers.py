"""Run ASGI apps under uvicorn inside an existing event loop.

`edithook dev` runs the API and the simulator side by side this way, and the tests use it
to put real HTTP servers on ephemeral loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn


class _QuietServer(uvicorn.Server):
    """A server that leaves signal handling to whoever owns the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningServer:
    """A uvicorn server started by `start_server`; `url` has no trailing slash."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        return (
            f"http://[{self.host}]:{self.port}"
            if ":" in self.host
            else f"http://{self.host}:{self.port}"
        )

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready socket on `host:port`; port 0 picks a free one.

    Binding before building the app lets the app know its own URL (the callback base).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name TCP, and without
    # it every answer waits ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    **config: Any,
) -> RunningServer:
    """Serve `app` on `sock` (or a new socket on `host:port`); return once it listens."""
    if sock is None:
        sock = bind(host, port)
    host, bound_port = sock.getsockname()[:2]
    config.setdefault("log_level", "warning")
    # Leave logging to the process (`app.logs`), whose handler redacts callback tokens.
    config.setdefault("log_config", None)
    config.setdefault("lifespan", "on")
    server = _QuietServer(uvicorn.Config(app, **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # surfaces the start-up error
            raise RuntimeError("server stopped before it started")
        await asyncio.sleep(0.01)
    return RunningServer(server=server, task=task, host=host, port=bound_port)


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    **config: Any,
) -> AsyncIterator[RunningServer]:
    """`start_server` as a context manager that stops the server on exit."""
    running = await start_server(app, host, port, sock=sock, **config)
    try:
        yield running
    finally:
        await running.stop()
