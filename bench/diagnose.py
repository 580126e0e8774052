"""Where the time goes: the callback path statement by statement, and the listing plans.

Both run in the harness's own process against the benchmark database, through edithook's
own code (`record_callback`, `list_tasks`) on an engine built by `app.db.create_engine`, so
they issue exactly the statements the service issues. They return markdown lines.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.callbacks.service import record_callback
from app.db import async_url, create_engine, create_sessionmaker, transaction
from app.resources import open_resources
from app.settings import Settings
from app.tasks.schemas import TaskCreate
from app.tasks.service import create_task
from app.tasks.submission import submit_task
from bench.apps import BOUND_SQL
from bench.ingest import USER_AGENT, callback_body
from bench.seed import Target
from bench.stack import POSTER

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
    """Times every statement an engine runs, and its commits, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._started: float = 0.0
        self.commit_started: float | None = None
        # Statements run while this is False are not recorded.
        self.recording = True

    def attach(self, sync_engine: Any) -> None:
        event.listen(sync_engine, "before_cursor_execute", self._before)
        event.listen(sync_engine, "after_cursor_execute", self._after)
        event.listen(sync_engine, "commit", self._commit)

    def _before(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.recording:
            self.seconds[_label(statement)].append(time.perf_counter() - self._started)

    def _commit(self, *_: Any) -> None:
        self.commit_started = time.perf_counter()

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


async def _checkout_ms(url: str, *, pre_ping: bool) -> float:
    """Mean time to check a connection out of a warm pool and return it, in ms."""
    engine = (
        create_engine(url)
        if pre_ping
        else create_async_engine(async_url(url), pool_size=10, max_overflow=10)
    )
    times: list[float] = []
    try:
        for index in range(60):
            started = time.perf_counter()
            async with engine.connect():
                pass
            if index >= WARMUP_CALLS:
                times.append(time.perf_counter() - started)
    finally:
        await engine.dispose()
    return statistics.fmean(times) * 1000


async def _breakdown(url: str, probes: list[Target]) -> list[str]:
    half = len(probes) // 2
    service_probes, bound_probes = probes[:half], probes[half:]
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    clock = _StatementClock()
    clock.attach(engine.sync_engine)
    totals: list[float] = []
    commits: list[float] = []
    try:
        for index, target in enumerate(service_probes):
            if index == WARMUP_CALLS:
                clock.reset()
            body = callback_body(target)
            clock.commit_started = None
            started = time.perf_counter()
            await record_callback(sessions, uuid.UUID(target.task_id), body, dict(HEADERS))
            done = time.perf_counter()
            if index >= WARMUP_CALLS:
                totals.append(done - started)
                if clock.commit_started is not None:
                    commits.append(done - clock.commit_started)
    finally:
        await engine.dispose()
    with_ping = await _checkout_ms(url, pre_ping=True)
    without_ping = await _checkout_ms(url, pre_ping=False)
    calls = len(totals)
    bound_times = await _time_bound(url, bound_probes)
    lines = [
        "### Callback path, one completion at a time",
        "",
        f"`record_callback` (what the receiver runs after the token check) for {calls}"
        " in-flight tasks, sequentially, in the harness's process; each statement timed"
        " from SQLAlchemy's before/after cursor events (round trip plus driver work).",
        "",
        *_statement_table(clock, calls),
    ]
    statement_total = sum(sum(seconds) for seconds in clock.seconds.values())
    mean_total = statistics.fmean(totals) * 1000 if totals else math.nan
    mean_statements = statement_total / calls * 1000 if calls else math.nan
    mean_commit = statistics.fmean(commits) * 1000 if commits else math.nan
    rest = mean_total - mean_statements - mean_commit
    lines += [
        "",
        f"- whole call: mean {mean_total:.3f} ms: statements {mean_statements:.3f} ms,"
        f" COMMIT {mean_commit:.3f} ms, the rest (session, ORM, pydantic, pool checkout with"
        f" its pre-ping) {rest:.3f} ms",
        f"- pool checkout and return: {with_ping:.3f} ms with `pool_pre_ping` (as"
        f" `app.db.create_engine` sets it), {without_ping:.3f} ms without",
    ]
    if bound_times:
        lines.append(
            f"- the bound's single statement for {len(bound_times)} other tasks, autocommit,"
            f" same driver: mean {statistics.fmean(bound_times) * 1000:.3f} ms"
        )
    return [*lines, ""]


async def _time_bound(url: str, probes: list[Target]) -> list[float]:
    times: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for index, target in enumerate(probes):
            body = callback_body(target)
            params = {
                "task_id": uuid.UUID(target.task_id),
                "provider_task_id": target.provider_task_id,
                "provider_status": "completed",
                "usage": Jsonb({"billing_rule": "per_call", "credits_reserved": target.results}),
                "results": [f"https://files.evolink.ai/x/{i}.png" for i in range(target.results)],
                "body": body.decode(),
                "headers": Jsonb(HEADERS),
            }
            started = time.perf_counter()
            await (await conn.execute(BOUND_SQL, params)).fetchone()
            if index >= WARMUP_CALLS:
                times.append(time.perf_counter() - started)
    return times


def callback_breakdown(url: str, probes: list[Target]) -> list[str]:
    """Markdown: the receiver's statements and their cost per completion, and the bound's."""
    if len(probes) < 2 * (WARMUP_CALLS + 1):
        return []
    return asyncio.run(_breakdown(url, probes))


async def _submissions(settings: Settings, simulator_url: str, count: int) -> list[str]:
    clock = _StatementClock()
    http: list[float] = []
    totals: list[float] = []
    async with open_resources(settings) as resources:
        clock.attach(resources.engine.sync_engine)
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
            clock.recording = False
            async with transaction(resources.sessions) as session:
                task, _ = await create_task(session, POSTER, body, None)
            if index == WARMUP_CALLS:
                clock.reset()
                http.clear()
            clock.recording = True
            started = time.perf_counter()
            await submit_task(resources, task.id)
            if index >= WARMUP_CALLS:
                totals.append(time.perf_counter() - started)
        clock.recording = False
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
    own = [sim_times[pid] for pid in provider_ids if pid in sim_times]
    return [
        "### Submission, one task at a time",
        "",
        f"`submit_task` (the body of the worker's submit job) for {len(totals)} queued tasks,"
        " sequentially, in the harness's process; statements timed as above, the create call"
        " as the client sees it.",
        "",
        *_statement_table(clock, len(totals)),
        "",
        f"- whole call: mean {_mean_ms(totals):.3f} ms; the create call (httpx client side)"
        f" {_mean_ms(http):.3f} ms, of which the simulator's own handler {_mean_ms(own):.3f} ms",
        "",
    ]


def submission_breakdown(env: dict[str, str], simulator_url: str, count: int = 50) -> list[str]:
    """Markdown: what the submit job does and what each part costs, without the worker."""
    values = {
        k.removeprefix("EDITHOOK_").lower(): v for k, v in env.items() if k.startswith("EDITHOOK_")
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    return asyncio.run(_submissions(settings, simulator_url, count))
