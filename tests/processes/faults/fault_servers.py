"""Small HTTP servers for fault tests: a file host that stalls mid-body, a counting sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse


class StallingFiles:
    """Serves the simulator's `/files/...` from `upstream`, holding each body half-sent while
    `stalling` is set, so that a download hangs in the middle until `release()`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.stalling = True
        self.requests: list[str] = []
        self.stalled = asyncio.Event()  # set once a response is held mid-body
        self._release = asyncio.Event()

    def release(self) -> None:
        """Serve whole bodies from now on, and let any held response finish."""
        self.stalling = False
        self._release.set()

    def build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/files/{path:path}")
        async def file(path: str) -> Response:
            self.requests.append(path)
            async with httpx.AsyncClient() as client:
                upstream = await client.get(f"{self.upstream}/files/{path}")
            media_type = upstream.headers.get("content-type")
            if not self.stalling or upstream.status_code != 200:
                return Response(upstream.content, upstream.status_code, media_type=media_type)
            body = upstream.content
            half = len(body) // 2

            async def pieces() -> AsyncIterator[bytes]:
                yield body[:half]
                self.stalled.set()
                await self._release.wait()
                yield body[half:]

            return StreamingResponse(
                pieces(), headers={"Content-Length": str(len(body))}, media_type=media_type
            )

        return app


class Sink:
    """Answers anything with 200 and counts what it was asked."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.url = ""

    def build(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT"])
        async def anything(path: str, request: Request) -> Response:
            self.requests.append(f"{request.method} /{path}")
            return Response(b"sink", 200, media_type="image/png")

        return app
