"""An image host that answers whatever a test sets, and HTTP clients for downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from app.servers import serving


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # no Content-Length: the body comes in pieces


@dataclass
class ImageHost:
    """Serves `replies[path]` for GET; records every request's path and Host header."""

    url: str = ""
    replies: dict[str, Reply] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.replies, self.seen = {}, []

    def serve(self, path: str, body: bytes = b"", status: int = 200, **kw: Any) -> str:
        """Answer GET `path` with this reply; returns the full URL."""
        self.replies[path] = Reply(status=status, body=body, **kw)
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.serve(path, status=status, headers={"Location": location})

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/{path:path}")
        async def answer(path: str, request: Request) -> Response:
            self.seen.append(("/" + path, request.headers.get("host", "")))
            reply = self.replies.get("/" + path, Reply(status=404))
            if reply.chunked:

                async def pieces() -> AsyncIterator[bytes]:
                    for start in range(0, len(reply.body), 1024):
                        yield reply.body[start : start + 1024]

                return StreamingResponse(pieces(), reply.status, headers=reply.headers)
            return Response(reply.body, reply.status, headers=reply.headers)

        return app


@pytest.fixture(scope="session")
async def shared_host() -> AsyncIterator[ImageHost]:
    host = ImageHost()
    async with serving(host.build()) as server:
        host.url = server.url
        yield host


@pytest.fixture
def host(shared_host: ImageHost) -> Iterator[ImageHost]:
    """An image host on a loopback port, with no replies set and nothing seen yet."""
    shared_host.reset()
    yield shared_host
    shared_host.reset()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain client for downloads, as the worker's download client is configured."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as client:
        yield client


@dataclass
class Forbidden:
    """A transport that fails any test that lets a request through to it."""

    attempts: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(str(request.url))
        return httpx.Response(599)


@pytest.fixture
async def no_network() -> AsyncIterator[tuple[httpx.AsyncClient, Forbidden]]:
    """A client whose every request is recorded and never leaves the process."""
    forbidden = Forbidden()
    async with httpx.AsyncClient(transport=httpx.MockTransport(forbidden.handle)) as client:
        yield client, forbidden
