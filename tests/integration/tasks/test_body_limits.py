"""Request bodies are bounded before anything reads them, and only a caller with a key is read.

These speak raw HTTP/1.1 (h11 over a socket) to the real server, so that a test can declare a
body and not send it: an answer that arrives anyway proves the server did not wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import httpx
import pytest

from tests.conftest import Caller, Service

# A guard so that a server waiting for the body fails the test instead of hanging it.
ANSWER_WITHIN_SECONDS = 20
HUGE = str(400 * 1024 * 1024)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def exchange(url: str, headers: list[tuple[str, str]], body: bytes = b"") -> Answer:
    """POST /v1/tasks with `headers`, send `body` (maybe less than declared), read the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST", target="/v1/tasks", headers=[("Host", parts.netloc), *headers]
    )
    try:
        writer.write(conn.send(request))
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        await writer.drain()
        status, answer_headers, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), ANSWER_WITHIN_SECONDS)
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Answer(status, answer_headers, b"".join(chunks))
    except TimeoutError:
        raise AssertionError("the server waited for a body instead of answering") from None
    finally:
        writer.close()


@pytest.fixture
def url(service_url: str) -> str:
    return service_url


@pytest.fixture
def key(caller: Caller) -> str:
    """The test's own API key."""
    return caller.key


async def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(url: str, key: str) -> None:
    """A Content-Length over the REST limit is refused at once, without waiting for the body."""
    answer = await exchange(
        url,
        [
            ("Authorization", f"Bearer {key}"),
            ("Content-Type", "application/json"),
            ("Content-Length", HUGE),
        ],
    )
    assert answer.status == 413, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert b"payload-too-large" in answer.body


async def test_a_streamed_body_over_the_limit_is_cut_with_413(url: str, key: str) -> None:
    """A chunked body is counted as it arrives and refused once it passes the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"y" * 65536

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/v1/tasks", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_streamed_body_is_cut_at_the_limit_not_at_its_end(
    url: str, key: str, service: Service
) -> None:
    """A chunked body that passes the limit is answered 413 while the rest is still to come.

    The body is never finished: a server that read to its end would wait, and the guard in
    `exchange` fails the test.
    """
    limit = service.settings.rest_max_body_bytes
    answer = await exchange(
        url,
        [
            ("Authorization", f"Bearer {key}"),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        body=b'{"prompt": "' + b"y" * limit,
    )
    assert answer.status == 413, answer
    assert b"payload-too-large" in answer.body


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-key", "Basic eDp5"])
async def test_a_body_without_a_valid_key_is_answered_401_unread(
    url: str, authorization: str | None
) -> None:
    """Without a valid key the answer is 401 before any of the declared body has arrived."""
    headers = [("Content-Type", "application/json"), ("Content-Length", "5000")]
    if authorization:
        headers.append(("Authorization", authorization))
    answer = await exchange(url, headers, body=b'{"prompt": ')
    assert answer.status == 401, answer
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.headers["content-type"] == "application/problem+json"


async def test_an_unauthenticated_huge_body_is_401_not_413(url: str) -> None:
    """The key is checked before the size: a stranger learns nothing about the limits."""
    answer = await exchange(url, [("Content-Type", "application/json"), ("Content-Length", HUGE)])
    assert answer.status == 401, answer


async def test_a_body_within_the_limit_is_still_accepted(url: str, key: str) -> None:
    """A task of ordinary size is created as before."""
    body = b'{"prompt": "snow", "image_urls": ["https://cdn.example.com/in/a.png"]}'
    answer = await exchange(
        url,
        [
            ("Authorization", f"Bearer {key}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ],
        body=body,
    )
    assert answer.status == 202, answer
