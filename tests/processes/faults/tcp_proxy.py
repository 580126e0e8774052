"""A TCP proxy in the test process that can play a database going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def upstream_of(database_url: str) -> Connect:
    """How to reach the Postgres of `database_url`: TCP, or its Unix socket (`?host=/dir`)."""
    parts = urlsplit(database_url)
    port = parts.port or 5432
    socket_dir = dict(parse_qsl(parts.query)).get("host", "")
    if socket_dir.startswith("/"):
        path = f"{socket_dir}/.s.PGSQL.{port}"
        return lambda: asyncio.open_unix_connection(path)
    host = parts.hostname or "127.0.0.1"
    return lambda: asyncio.open_connection(host, port)


def proxied_url(database_url: str, port: int) -> str:
    """`database_url` aimed at 127.0.0.1:`port` instead of its server."""
    parts = urlsplit(database_url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class TcpProxy:
    """Forwards 127.0.0.1:`port` to an upstream server.

    `go_down` stops listening, so new connections are refused, and aborts every live one,
    as a stopped server would; `come_back` listens again on the same port.
    """

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.cut = 0

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def go_down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
            self.cut += 1
        # An aborted connection reads as EOF: every link ends by itself.
        if self._links:
            await asyncio.wait(list(self._links), timeout=5)

    async def come_back(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.go_down()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.transport.abort()
            return
        link = asyncio.current_task()
        assert link is not None
        self._links.add(link)
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                self._writers.discard(each)
                each.transport.abort()
            self._links.discard(link)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()
