"""A caller's webhook receiver, run as its own process: verifies every delivery, times it.

`python -m bench.receiver --port N` serves:

- `POST /hooks/{name}`: a delivery. Its body is read in full, the arrival time taken (Unix
  time, this machine's clock, as the simulator's), then it is verified with
  `standardwebhooks` against the secret of `name`, as a caller verifies one. Verified: 204
  and the arrival kept; not: 400 and the failure counted (the message is then retried, and
  the phase reports it).
- `PUT /_bench/secrets`: `{name: secret}`, the endpoints' secrets as registration returned
  them.
- `GET /_bench/received/{name}`: every verified arrival at `name`, in order:
  `[{"id", "type", "task", "provider", "at"}]`, and the failures by name.
- `GET /_bench/wait/{name}/{task}/{type}`: answers with that task's arrival of that type as
  soon as it is in (at most `WAIT_SECONDS`, then 404): the harness's one task at a time.

A raw ASGI app on uvicorn with the arguments `serve` uses, so that the receiver costs the
measured path as little as a fast caller's would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOOKS = "/hooks/"
WAIT_SECONDS = 30.0


class Receiver:
    """The receiver's state: secrets by name, arrivals, failures, and who waits for what."""

    def __init__(self) -> None:
        self.hooks: dict[str, Webhook] = {}
        self.received: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)
        self._arrived: dict[tuple[str, str, str], asyncio.Event] = {}
        self._by_key: dict[tuple[str, str, str], dict[str, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = await _body(receive)
        if method == "POST" and path.startswith(HOOKS):
            await _answer(send, self.deliver(path.removeprefix(HOOKS), body, scope))
        elif method == "PUT" and path == "/_bench/secrets":
            self.hooks.update({name: Webhook(key) for name, key in json.loads(body).items()})
            await _answer(send, 204)
        elif method == "GET" and path.startswith("/_bench/received/"):
            name = path.removeprefix("/_bench/received/")
            await _answer(
                send, 200, {"received": self.received[name], "failures": dict(self.failures)}
            )
        elif method == "GET" and path.startswith("/_bench/wait/"):
            name, task, kind = path.removeprefix("/_bench/wait/").split("/")
            found = await self.wait((name, task, kind))
            await _answer(send, 200 if found else 404, found)
        elif method == "GET" and path == "/healthz":
            await _answer(send, 200, {})
        else:
            await _answer(send, 404)

    def deliver(self, name: str, body: bytes, scope: Scope) -> int:
        at = time.time()
        headers = {key.decode("latin-1"): val.decode("latin-1") for key, val in scope["headers"]}
        hook = self.hooks.get(name)
        try:
            if hook is None:
                raise WebhookVerificationError(f"no secret for {name}")
            payload = hook.verify(body, headers)
        except WebhookVerificationError:
            self.failures[name] += 1
            return 400
        data = payload.get("data") or {}
        record = {
            "id": headers.get("webhook-id"),
            "type": payload.get("type"),
            "task": data.get("id"),
            "provider": data.get("provider_task_id"),
            "at": at,
        }
        self.received[name].append(record)
        key = (name, str(record["task"]), str(record["type"]))
        self._by_key.setdefault(key, record)
        self._event(key).set()
        return 204

    def _event(self, key: tuple[str, str, str]) -> asyncio.Event:
        return self._arrived.setdefault(key, asyncio.Event())

    async def wait(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                await self._event(key).wait()
        except TimeoutError:
            return None
        return self._by_key[key]


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: Any = None) -> None:
    body = b"" if payload is None or status == 204 else json.dumps(payload).encode()
    headers = [(b"content-length", b"%d" % len(body))]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from app.logs import UVICORN_LOG_CONFIG, configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging("warning")
    uvicorn.run(
        Receiver(),
        host="127.0.0.1",
        port=args.port,
        log_config=UVICORN_LOG_CONFIG,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
