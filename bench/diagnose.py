"""Where the time goes: the callback path (direct and careful), and the submit job.

Both run in the harness's own process against the benchmark database, through edithook's
own code (`record_callback`, `submit_task`) on the engine and direct pool `app.db` builds,
so they issue exactly the statements the service issues. They return markdown lines.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
from sqlalchemy import event, text

from app.callbacks.service import record_callback
from app.db import create_engine, create_pool, create_sessionmaker, transaction
from app.resources import open_resources
from app.settings import Settings
from app.tasks.schemas import TaskCreate
from app.tasks.service import create_task
from app.tasks.submission import callback_url, submit_task
from bench.apps import bound_statement
from bench.ingest import USER_AGENT, callback_body
from bench.loadgen import build_request, read_answer
from bench.seed import Target
from bench.sim_server import CREATE_PATH
from bench.stack import EVOLINK_KEY, POSTER

WARMUP_CALLS = 10
EDIT_IMAGE = "https://cdn.example.com/in/abc123.png"
HEADERS = {"content-type": "application/json", "user-agent": USER_AGENT, "peer": "127.0.0.1"}


def _label(statement: str) -> str:
    """A short name for a statement: its verb and what it touches."""
    words = " ".join(statement.split())
    upper = words.upper()
    if "PROCRASTINATE_DEFER_JOBS" in upper:
        return "SELECT procrastinate_defer_jobs_v1 (enqueue a job)"
    if "PG_NOTIFY" in upper:
        return "SELECT pg_notify (wake waiters)"
    if upper.startswith("SELECT") and "FOR UPDATE" in upper:
        return "SELECT task … FOR UPDATE"
    for verb in ("INSERT INTO", "UPDATE", "DELETE FROM"):
        if upper.startswith(verb):
            return f"{verb} {words[len(verb) :].split()[0]}"
    return words[:60]


class _StatementClock:
    """Times every statement an engine runs, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._started: float = 0.0

    def attach(self, sync_engine: Any) -> None:
        event.listen(sync_engine, "before_cursor_execute", self._before)
        event.listen(sync_engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seconds[_label(statement)].append(time.perf_counter() - self._started)

    def reset(self) -> None:
        self.seconds.clear()


def _mean_ms(values: list[float]) -> float:
    return statistics.fmean(values) * 1000 if values else math.nan


def _statement_table(clock: _StatementClock, calls: int) -> list[str]:
    """A markdown table of the statements `clock` saw: how many per call, mean time each."""
    lines = ["| statement | per call | mean ms |", "|---|---:|---:|"]
    for label, seconds in sorted(clock.seconds.items(), key=lambda item: -sum(item[1])):
        per_call = len(seconds) / calls if calls else 0.0
        lines.append(f"| {label} | {per_call:.2f} | {_mean_ms(seconds):.3f} |")
    return lines


async def _time_calls(
    sessions: Any, pool: Any, probes: list[Target], clock: _StatementClock | None = None
) -> list[float]:
    """Seconds per `record_callback` for each probe after the warm-up ones, sequentially."""
    totals: list[float] = []
    for index, target in enumerate(probes):
        if clock is not None and index == WARMUP_CALLS:
            clock.reset()
        body = callback_body(target)
        started = time.perf_counter()
        await record_callback(sessions, pool, uuid.UUID(target.task_id), body, dict(HEADERS))
        if index >= WARMUP_CALLS:
            totals.append(time.perf_counter() - started)
    return totals


async def _breakdown(url: str, probes: list[Target]) -> list[str]:
    third = len(probes) // 3
    direct_probes, careful_probes, bound_probes = (
        probes[:third],
        probes[third : 2 * third],
        probes[2 * third :],
    )
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    pool = create_pool(url)
    await pool.open(wait=True)
    clock = _StatementClock()
    clock.attach(engine.sync_engine)
    try:
        direct_times = await _time_calls(sessions, pool, direct_probes)
        careful_times = await _time_calls(sessions, None, careful_probes, clock)
    finally:
        await pool.close()
        await engine.dispose()
    bound_times = await _time_bound(url, bound_probes)
    calls = len(careful_times)
    return [
        "### Callback path, one completion at a time",
        "",
        "`record_callback` (what the receiver runs after the token check), sequentially, in"
        " the harness's process, for in-flight tasks:",
        "",
        f"- one statement on the direct pool (what a completion or its duplicate takes):"
        f" mean {_mean_ms(direct_times):.3f} ms over {len(direct_times)} tasks",
        f"- the bound's single statement, autocommit, same driver: mean"
        f" {_mean_ms(bound_times):.3f} ms over {len(bound_times)} other tasks",
        f"- read, judge, write on the engine (what every unusual message takes):"
        f" mean {_mean_ms(careful_times):.3f} ms over {calls} other tasks, its statements"
        " timed from SQLAlchemy's before/after cursor events (round trip plus driver work):",
        "",
        *_statement_table(clock, calls),
        "",
    ]


async def _time_bound(url: str, probes: list[Target]) -> list[float]:
    times: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for index, target in enumerate(probes):
            body = callback_body(target)
            statement, params = bound_statement(
                uuid.UUID(target.task_id), json.loads(body), body.decode(), HEADERS
            )
            started = time.perf_counter()
            await (await conn.execute(statement, params)).fetchone()
            if index >= WARMUP_CALLS:
                times.append(time.perf_counter() - started)
    return times


def callback_breakdown(url: str, probes: list[Target]) -> list[str]:
    """Markdown: the receiver's statements and their cost per completion, and the bound's."""
    if len(probes) < 3 * (WARMUP_CALLS + 1):
        return []
    return asyncio.run(_breakdown(url, probes))


async def _submissions(settings: Settings, simulator_url: str, count: int) -> list[str]:
    http: list[float] = []
    totals: list[float] = []
    async with open_resources(settings) as resources:
        create = resources.evolink.create_task

        async def timed_create(request: Any) -> Any:
            started = time.perf_counter()
            try:
                return await create(request)
            finally:
                http.append(time.perf_counter() - started)

        resources.evolink.create_task = timed_create  # type: ignore[method-assign]
        # [sim:hold]: the simulator keeps these processing, so no callback follows.
        body = TaskCreate(prompt="diagnosis [sim:hold]", image_urls=[EDIT_IMAGE])
        for index in range(count + WARMUP_CALLS):
            async with transaction(resources.sessions) as session:
                task, _ = await create_task(session, POSTER, body, None)
            if index == WARMUP_CALLS:
                http.clear()
            started = time.perf_counter()
            await submit_task(
                resources.pool,
                resources.sessions,
                resources.evolink,
                task.id,
                callback_url=callback_url(settings, task.id),
                attempts=settings.submit_attempts,
                unknown_timeout_seconds=settings.submit_unknown_timeout_seconds,
            )
            if index >= WARMUP_CALLS:
                totals.append(time.perf_counter() - started)
        async with resources.sessions() as session:
            providers = (
                await session.execute(
                    text(
                        "SELECT provider_task_id FROM tasks WHERE client = :client"
                        " AND provider_task_id IS NOT NULL ORDER BY created_at DESC LIMIT :n"
                    ),
                    {"client": POSTER, "n": count},
                )
            ).scalars()
            provider_ids = list(providers)
        async with transaction(resources.sessions) as session:
            await session.execute(text("DELETE FROM procrastinate_jobs WHERE status = 'todo'"))
    async with httpx.AsyncClient(base_url=simulator_url) as sim:
        sim_times = (await sim.get("/_bench/create-times")).json()
    own = [sim_times[pid]["seconds"] for pid in provider_ids if pid in sim_times]
    return [
        "### Submission, one task at a time",
        "",
        f"`submit_task` (the body of the worker's submit job) for {len(totals)} queued tasks,"
        " sequentially, in the harness's process, the create call timed as the client sees it:",
        "",
        f"- whole call: mean {_mean_ms(totals):.3f} ms",
        f"- the create call (httpx client side): {_mean_ms(http):.3f} ms, of which the"
        f" simulator's own handler {_mean_ms(own):.3f} ms",
        f"- the rest — the claim and the record, one statement each on the direct pool, and"
        f" the Python around them: {_mean_ms(totals) - _mean_ms(http):.3f} ms",
        "",
    ]


def submission_breakdown(env: dict[str, str], simulator_url: str, count: int = 50) -> list[str]:
    """Markdown: what the submit job does and what each part costs, without the worker."""
    values = {
        k.removeprefix("EDITHOOK_").lower(): v for k, v in env.items() if k.startswith("EDITHOOK_")
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    return asyncio.run(_submissions(settings, simulator_url, count))


IDLE_SECONDS = 0.02
ROUND_TRIP_SAMPLES = 60


async def _time_probe(probe: Callable[[], Awaitable[Any]], idle: float) -> float:
    """The median seconds of `probe`, each call after `idle` seconds of doing nothing."""
    for _ in range(WARMUP_CALLS):
        await probe()
    seconds: list[float] = []
    for _ in range(ROUND_TRIP_SAMPLES):
        if idle:
            await asyncio.sleep(idle)
        started = time.perf_counter()
        await probe()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


async def _round_trips(url: str, simulator_url: str) -> list[str]:
    body = json.dumps(
        {
            "model": "qwen-image-edit-plus",
            "prompt": "round trip [sim:hold]",
            "image_urls": [EDIT_IMAGE],
            "callback_url": "https://callbacks.example.com/none",
        }
    ).encode()
    headers = {"Authorization": f"Bearer {EVOLINK_KEY}", "Content-Type": "application/json"}
    host = simulator_url.removeprefix("http://")
    raw_request = build_request("POST", CREATE_PATH, host, headers, body)
    address, _, port = host.partition(":")

    async def raw_create() -> None:
        writer.write(raw_request)
        status, _ = await read_answer(reader)
        assert status == 200, status

    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        httpx.AsyncClient(base_url=simulator_url) as http,
    ):

        async def httpx_create() -> None:
            (await http.post(CREATE_PATH, content=body, headers=headers)).raise_for_status()

        reader, writer = await asyncio.open_connection(address, int(port))
        lines = [
            "### Round trips on this machine",
            "",
            "The same exchange back to back, and after the process and its peer idled"
            f" {IDLE_SECONDS * 1000:g} ms (as a submit job's are: jobs arrive one at a time);"
            f" medians of {ROUND_TRIP_SAMPLES}:",
            "",
            "| exchange | back to back ms | after idling ms |",
            "|---|---:|---:|",
        ]
        try:
            await conn.execute("CREATE TABLE bench_round_trip (id int PRIMARY KEY, n int NOT NULL)")
            await conn.execute("INSERT INTO bench_round_trip VALUES (1, 0)")
            probes: dict[str, Callable[[], Awaitable[Any]]] = {
                "`SELECT 1` (psycopg, autocommit)": lambda: conn.execute("SELECT 1"),
                "a one-row UPDATE, committed": lambda: conn.execute(
                    "UPDATE bench_round_trip SET n = n + 1 WHERE id = 1"
                ),
                "the simulator's create, raw HTTP/1.1": raw_create,
                "the simulator's create, httpx": httpx_create,
            }
            for name, probe in probes.items():
                hot = await _time_probe(probe, 0.0)
                cold = await _time_probe(probe, IDLE_SECONDS)
                lines.append(f"| {name} | {hot * 1000:.3f} | {cold * 1000:.3f} |")
        finally:
            writer.close()
            await conn.execute("DROP TABLE IF EXISTS bench_round_trip")
    return [*lines, ""]


def round_trips(url: str, simulator_url: str) -> list[str]:
    """Markdown: what one exchange with Postgres or the simulator costs, warm and after idling."""
    return asyncio.run(_round_trips(url, simulator_url))
