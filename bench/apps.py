"""The two comparison servers of the callback-ingest benchmark.

- **floor**: the same framework (FastAPI under uvicorn) answering 204 at the callback path
  with no work at all — what HTTP parsing, routing and the answer cost by themselves.
- **bound**: a bare handler that does what a correct idempotent receiver must and nothing
  more: check the URL's token, read the body, and run ONE SQL statement (`bound_statement`:
  edithook's own writer statement, app.tasks.writer, with the verdict stated directly) on a
  psycopg 3 pool configured as edithook's direct pool (`app.db.create_pool`). The statement
  completes the task only if it is in flight, writes the event row (applied or duplicate)
  with the raw body and the kept headers, adds the result rows, enqueues the result-copy
  job and notifies waiters — everything edithook's receiver commits for a completion, in
  one round trip.

`python -m bench.apps floor|bound --port N` serves one of them with the uvicorn settings
`edithook serve` uses (uvloop and httptools when installed, the same log set-up and level).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, LiteralString

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from app.callbacks.service import chosen_headers
from app.db import create_pool
from app.resources import settle_heap
from app.security import token_matches
from app.tasks.transitions import Verdict, terminal_guards
from app.tasks.writer import Event, prepare
from app.vocabulary import EventKind, EventOutcome, ResolvedBy, TaskStatus

CALLBACK_ROUTE = "/v1/callbacks/evolink/{task_id}/{token}"


def bound_statement(
    task_id: uuid.UUID, document: dict[str, Any], body: str, headers: dict[str, str]
) -> tuple[LiteralString, dict[str, Any]]:
    """edithook's own one statement for a completion callback and its duplicate
    (app.tasks.writer), with the guards derived from its rules, but the verdict stated
    directly: no model validation, no `judge`. Completes the task only if it is in flight
    with the provider id named, else records a duplicate if it is already completed."""
    urls = tuple(url for url in document.get("results") or [] if isinstance(url, str))
    guards = terminal_guards("completed", None, len(urls), EventKind.CALLBACK)
    assert guards is not None
    pid = document.get("id")
    applied, repeated = (dataclasses.replace(guard, provider_task_id=pid) for guard in guards)
    changes: dict[str, Any] = {
        "status": TaskStatus.COMPLETED,
        "progress": 100,
        "resolved_by": ResolvedBy.CALLBACK,
        "finished_at": datetime.now(UTC),
    }
    if document.get("usage") is not None:
        changes["usage"] = document["usage"]
    verdict = Verdict(EventOutcome.APPLIED, None, TaskStatus.COMPLETED, changes, urls)
    event = Event(EventKind.CALLBACK, document.get("status"), body, headers)
    duplicate = (Verdict(EventOutcome.DUPLICATE), repeated)
    return prepare(task_id, verdict, applied, event, otherwise=duplicate)


def create_floor_app() -> FastAPI:
    """FastAPI answering 204 at the callback path, reading nothing, touching nothing."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settle_heap()  # as edithook does once it has started
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post(CALLBACK_ROUTE, status_code=204)
    async def floor(task_id: str, token: str) -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_bound_app(database_url: str, secret: str, pool_size: int = 10) -> FastAPI:
    """The bare receiver: token check, body, `bound_statement` on a pool of `2 * pool_size` at most.

    The pool is edithook's direct pool (pool_size connections, as many again at peak,
    statements prepared and planned once per connection). Answers 200 `{"received": true,
    "outcome": …}` like edithook, 404 for a wrong token or an unknown task, 400 for a body
    that is not a JSON object.
    """
    # edithook's own direct pool: autocommit, statements prepared on first use and planned
    # once per connection. The statement is edithook's, so is what it costs to plan.
    pool = create_pool(database_url, pool_size=pool_size)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        settle_heap()  # as edithook does once it has started
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post(CALLBACK_ROUTE)
    async def bound(task_id: str, token: str, request: Request) -> Response:
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            return Response(status_code=404)
        if not token_matches(secret, parsed, token):
            return Response(status_code=404)
        body = await request.body()
        try:
            document = json.loads(body)
        except ValueError:
            return Response(status_code=400)
        if not isinstance(document, dict):
            return Response(status_code=400)
        headers = chosen_headers(request.headers, request.client.host if request.client else None)
        statement, params = bound_statement(
            parsed, document, body.decode("utf-8", errors="replace"), headers
        )
        async with pool.connection() as conn:
            row = await (await conn.execute(statement, params)).fetchone()
        if row is None:
            return Response(status_code=404)
        return JSONResponse({"received": True, "outcome": row[0]})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the floor or the bound app; the bound reads BENCH_DATABASE_URL and
    EDITHOOK_CALLBACK_SECRET, and both read EDITHOOK_LOG_LEVEL, from the environment."""
    import uvicorn

    from app.logs import UVICORN_LOG_CONFIG, configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.apps")
    parser.add_argument("kind", choices=["floor", "bound"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("EDITHOOK_LOG_LEVEL", "info"))
    if args.kind == "floor":
        app = create_floor_app()
    else:
        app = create_bound_app(
            os.environ["BENCH_DATABASE_URL"],
            os.environ["EDITHOOK_CALLBACK_SECRET"],
            int(os.environ.get("EDITHOOK_DB_POOL_SIZE", "10")),
        )
    # The arguments `edithook serve` gives uvicorn.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=UVICORN_LOG_CONFIG,
        proxy_headers=True,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
