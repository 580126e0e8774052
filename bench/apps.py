"""The two comparison servers of the callback-ingest benchmark.

- **floor**: the same framework (FastAPI under uvicorn) answering 204 at the callback path
  with no work at all — what HTTP parsing, routing and the answer cost by themselves.
- **bound**: a bare handler that does what a correct idempotent receiver must and nothing
  more: check the URL's token, read the body, and run ONE SQL statement (`BOUND_SQL`) on a
  psycopg 3 `AsyncConnectionPool`, the driver edithook uses. The statement completes the task
  only if it is not terminal yet, writes the event row (applied or duplicate) with the raw
  body and the kept headers, adds the result rows, enqueues the result-copy job and notifies
  waiters — everything edithook's receiver commits for a completion, in one round trip.

`python -m bench.apps floor|bound --port N` serves one of them with the uvicorn settings
`edithook serve` uses (uvloop and httptools when installed, the same log set-up and level).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from app.callbacks.service import chosen_headers
from app.resources import settle_heap
from app.security import token_matches

CALLBACK_ROUTE = "/v1/callbacks/evolink/{task_id}/{token}"

# One statement, one round trip, idempotent under concurrency: `prior` locks the row, so a
# concurrent duplicate waits and then sees the completed status and records `duplicate`.
BOUND_SQL = """
WITH prior AS (
    SELECT id, status FROM tasks WHERE id = %(task_id)s FOR UPDATE
), moved AS (
    UPDATE tasks AS t
    SET status = 'completed', progress = 100, usage = %(usage)s, resolved_by = 'callback',
        finished_at = clock_timestamp(), updated_at = clock_timestamp()
    FROM prior
    WHERE t.id = prior.id
      AND prior.status IN ('queued', 'submitting', 'pending', 'processing')
      AND t.provider_task_id = %(provider_task_id)s
    RETURNING t.id, prior.status AS from_status
), results AS (
    INSERT INTO task_results (task_id, index, provider_url, status)
    SELECT moved.id, r.ordinality - 1, r.url, 'pending'
    FROM moved, unnest(%(results)s::text[]) WITH ORDINALITY AS r(url, ordinality)
    ON CONFLICT (task_id, index) DO NOTHING
), side_effects AS (
    SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(
               'default', 'store_results', 0, 'results:' || moved.id::text, NULL,
               jsonb_build_object('task_id', moved.id::text), NULL
           )::procrastinate_job_to_defer_v1]),
           pg_notify('edithook_tasks', moved.id::text)
    FROM moved
)
INSERT INTO task_events
    (task_id, kind, outcome, from_status, to_status, provider_status, body, headers)
SELECT prior.id, 'callback',
       CASE WHEN moved.id IS NULL THEN 'duplicate' ELSE 'applied' END,
       moved.from_status,
       CASE WHEN moved.id IS NULL THEN NULL ELSE 'completed' END,
       %(provider_status)s, %(body)s, %(headers)s
FROM prior
LEFT JOIN moved ON true
-- An inner join: the planner drops a LEFT JOIN whose columns are unused, and with it the
-- side effects (the copy job and the notification would then never happen).
CROSS JOIN (SELECT count(*) AS effects FROM side_effects) AS done
RETURNING outcome
"""


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
    """The bare receiver: token check, body, `BOUND_SQL` on a pool of `2 * pool_size` at most.

    The pool's ceiling matches edithook's engine (pool_size plus as many overflow
    connections). Answers 200 `{"received": true, "outcome": …}` like edithook, 404 for a
    wrong token or an unknown task, 400 for a body that is not a JSON object.
    """
    pool = AsyncConnectionPool(
        database_url,
        min_size=pool_size,
        max_size=2 * pool_size,
        kwargs={"autocommit": True},
        open=False,
    )

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
        params = {
            "task_id": parsed,
            "provider_task_id": document.get("id"),
            "provider_status": document.get("status"),
            "usage": Jsonb(document.get("usage")),
            "results": [url for url in document.get("results") or [] if isinstance(url, str)],
            "body": body.decode("utf-8", errors="replace"),
            "headers": Jsonb(headers),
        }
        async with pool.connection() as conn:
            row = await (await conn.execute(BOUND_SQL, params)).fetchone()
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
