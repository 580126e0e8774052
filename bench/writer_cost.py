"""What the task writer's statement costs, one hot verdict at a time.

`python -m bench.writer_cost` seeds a small database as `python -m bench` does (or reuses
one given with `--database`), then sends callbacks through edithook's own receiver code
(`record_callback` on a direct pool from `app.db.create_pool`, one connection kept) one at a
time, for the three verdicts that make nearly all of a receiver's traffic:

- **completion**: a terminal `completed` callback for a task in flight, written without a
  read (the fast path): the task completed, its result rows, the copy job, the notification
  and the event, in one statement;
- **duplicate**: the same callback again, recorded as a duplicate by the same statement;
- **progress**: a `processing` callback with progress 75 for a task in flight: read, judged
  and written (two statements).

Each round runs every verdict `--calls` times (the first few of each are warm-up, not
counted) and reports, per call: wall time, the calling thread's CPU time, and the CPU time
of the Postgres backends serving the pool (from `/proc/<pid>/schedstat`, so only when
Postgres runs on this machine). CPU times are what a busy shared machine blurs least. The
table gives the median of the rounds' means and their range.

With `--explain`, the statements of one call of each verdict are shown with `EXPLAIN
(ANALYZE, BUFFERS)` through `auto_explain` on the pool's own connection: the plans of the
prepared statements as the service runs them (needs a superuser, as the harness's is).

To compare two versions of the code, seed once with `--keep`, then run the tool of each
version alternately against `--database` (each run takes tasks no earlier run completed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from app.callbacks.service import record_callback
from app.db import create_engine, create_pool, create_sessionmaker
from bench import database
from bench.seed import Target, seed_tasks

HEADERS = {"content-type": "application/json", "user-agent": "EvoLink-Callback/1.0"}
WARMUP_CALLS = 5
VERDICTS = ("completion", "duplicate", "progress")


def completion_body(target: Target) -> bytes:
    """The callback EvoLink posts when `target` completes with as many images as it asked."""
    pid = target.provider_task_id
    return json.dumps(
        {
            "created": 1700000000,
            "id": pid,
            "model": "qwen-image-edit-plus",
            "object": "image.generation.task",
            "progress": 100,
            "status": "completed",
            "task_info": {"can_cancel": False},
            "type": "image",
            "usage": {
                "billing_rule": "per_call",
                "credits_reserved": target.results,
                "user_group": "default",
            },
            "results": [f"https://files.evolink.ai/{pid}/{i}.png" for i in range(target.results)],
        }
    ).encode()


def progress_body(target: Target) -> bytes:
    """A progress callback for `target`: processing, 75 %."""
    return json.dumps(
        {
            "created": 1700000000,
            "id": target.provider_task_id,
            "model": "qwen-image-edit-plus",
            "object": "image.generation.task",
            "progress": 75,
            "status": "processing",
            "task_info": {"can_cancel": False, "estimated_time": 18},
            "type": "image",
        }
    ).encode()


def fresh_targets(url: str, count: int) -> list[Target]:
    """`count` tasks in flight that no callback has reached yet (progress below 75)."""
    rows = database.fetch(
        url,
        "SELECT id::text, provider_task_id, coalesce((request->>'n')::int, 1) FROM tasks"
        " WHERE status IN ('pending', 'processing') AND provider_task_id IS NOT NULL"
        " AND progress < 75 ORDER BY id LIMIT %(count)s",
        {"count": count},
    )
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} fresh tasks in flight left; seed a new database")
    return [Target(task_id, pid, n) for task_id, pid, n in rows]


def _backend_ns(pids: list[int]) -> int | None:
    """CPU nanoseconds the backends `pids` have run, or None when /proc cannot tell."""
    try:
        return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) for pid in pids)
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Totals:
    """Sums over the counted calls of one verdict in one round."""

    calls: int = 0
    wall_ns: int = 0
    client_ns: int = 0
    backend_ns: int | None = 0

    def per_call_ms(self) -> tuple[float, float, float]:
        backend = math.nan if self.backend_ns is None else self.backend_ns / self.calls / 1e6
        return self.wall_ns / self.calls / 1e6, self.client_ns / self.calls / 1e6, backend


@dataclass
class Results:
    rounds: dict[str, list[tuple[float, float, float]]] = field(
        default_factory=lambda: {verdict: [] for verdict in VERDICTS}
    )


async def _backend_pids(url: str) -> list[int]:
    """The pids of every client backend on the database but the asking one's: the pool's
    and the engine's connections (the engine serves what the direct pool cannot)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in await cursor.fetchall()]


async def _time(
    url: str, sessions: Any, pool: Any, calls: list[tuple[uuid.UUID, bytes]], expect: str
) -> Totals:
    totals = Totals()
    pids: list[int] = []
    for index, (task_id, body) in enumerate(calls):
        if index == WARMUP_CALLS:  # every connection the calls use is open by now
            pids = await _backend_pids(url)
        backend = _backend_ns(pids)
        client = time.thread_time_ns()
        started = time.perf_counter_ns()
        outcome = await record_callback(sessions, pool, task_id, body, dict(HEADERS))
        wall = time.perf_counter_ns() - started
        client = time.thread_time_ns() - client
        backend_after = _backend_ns(pids)
        if outcome is None or outcome.value != expect:
            raise RuntimeError(f"task {task_id}: {outcome} where {expect} was expected")
        if index < WARMUP_CALLS:
            continue
        totals.calls += 1
        totals.wall_ns += wall
        totals.client_ns += client
        if backend is None or backend_after is None or totals.backend_ns is None:
            totals.backend_ns = None
        else:
            totals.backend_ns += backend_after - backend
    return totals


async def _rounds(url: str, calls: int, rounds: int) -> Results:
    engine = create_engine(url, pool_size=1)
    sessions = create_sessionmaker(engine)
    pool = create_pool(url, pool_size=1)
    await pool.open(wait=True)
    results = Results()
    try:
        for _ in range(rounds):
            targets = fresh_targets(url, 2 * calls)
            completing, progressing = targets[:calls], targets[calls:]
            completions = [(uuid.UUID(t.task_id), completion_body(t)) for t in completing]
            progress = [(uuid.UUID(t.task_id), progress_body(t)) for t in progressing]
            for verdict, batch, expect in (
                ("completion", completions, "applied"),
                ("duplicate", completions, "duplicate"),
                ("progress", progress, "applied"),
            ):
                totals = await _time(url, sessions, pool, batch, expect)
                results.rounds[verdict].append(totals.per_call_ms())
    finally:
        await pool.close()
        await engine.dispose()
    return results


EXPLAIN_SETTINGS = {
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on",
    "auto_explain.log_nested_statements": "off",
    "client_min_messages": "log",
}


async def _explain(url: str) -> list[str]:
    """The plans of one call of each verdict, as auto_explain logs them on the pool's
    connection (the prepared statements' generic plans, executed)."""
    engine = create_engine(url, pool_size=1)
    sessions = create_sessionmaker(engine)
    pool = create_pool(url, pool_size=1)
    await pool.open(wait=True)
    notices: list[str] = []
    lines: list[str] = []
    try:
        async with pool.connection() as conn:
            await conn.execute("LOAD 'auto_explain'")
            for name, value in EXPLAIN_SETTINGS.items():
                await conn.execute(f"SET {name} = '{value}'")  # constants above
            conn.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
        # The second call of each shape is shown: the first prepares and plans.
        targets = fresh_targets(url, 4)
        for verdict, pair, make, expect in (
            ("completion", targets[:2], completion_body, "applied"),
            ("duplicate", targets[:2], completion_body, "duplicate"),
            ("progress", targets[2:], progress_body, "applied"),
        ):
            for target in pair:
                notices.clear()
                outcome = await record_callback(
                    sessions, pool, uuid.UUID(target.task_id), make(target), dict(HEADERS)
                )
                if outcome is None or outcome.value != expect:
                    raise RuntimeError(f"task {target.task_id}: {outcome}, not {expect}")
            lines += [f"#### {verdict}", ""]
            for notice in notices:
                text, _, plan = notice.partition("\n")
                query, _, plan = plan.partition("\n\n")
                lines += [f"`{text.strip()}`", "", "```sql", query.strip(), "```", ""]
                lines += ["```", plan.strip(), "```", ""]
    finally:
        await pool.close()
        await engine.dispose()
    return lines


def _table(results: Results) -> list[str]:
    lines = [
        "| verdict | wall ms | client CPU ms | backend CPU ms |",
        "|---|---:|---:|---:|",
    ]
    for verdict, rounds in results.rounds.items():
        cells = []
        for column in zip(*rounds, strict=True):
            values = [v for v in column if not math.isnan(v)]
            if not values:
                cells.append("—")
                continue
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})")
        lines.append(f"| {verdict} | {' | '.join(cells)} |")
    return lines


@contextmanager
def _database(options: argparse.Namespace) -> Iterator[str]:
    if options.database:
        yield options.database
        return
    with database.postgres_server(options.admin_url) as admin_url:
        name = f"edithook_bench_writer_{uuid.uuid4().hex[:8]}"
        with database.bench_database(admin_url, name, keep=options.keep) as url:
            report = seed_tasks(url, options.tasks, now=datetime.now(UTC), targets=options.targets)
            database.vacuum_analyze(url, "tasks", "task_results")
            print(f"seeded {report.tasks:,} tasks ({options.targets:,} in flight) in {url}")
            yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="calls per verdict and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks to seed")
    parser.add_argument("--targets", type=int, default=20_000, help="of them in flight")
    parser.add_argument("--database", help="a database seeded earlier (with --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--admin-url", help="a Postgres URL where a database may be created")
    parser.add_argument("--explain", action="store_true", help="also show the plans")
    options = parser.parse_args(argv)
    with _database(options) as url:
        started = time.strftime("%H:%M:%S")
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        results = asyncio.run(_rounds(url, options.calls, options.rounds))
        print(
            f"\n{options.rounds} rounds of {options.calls} calls per verdict"
            f" ({options.calls - WARMUP_CALLS} counted), from {started}, load {load} →"
            f" {', '.join(f'{value:.2f}' for value in os.getloadavg())}; median of the rounds'"
            " means (range):\n"
        )
        print("\n".join(_table(results)))
        if options.explain:
            print()
            print("\n".join(asyncio.run(_explain(url))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
