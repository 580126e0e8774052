"""`python -m bench`: set everything up, run every measurement, print and write the table.

The order of a run:

1. a database `edithook_bench` on the server the tests would use, migrated; seeded with
   `--tasks` tasks (the newest of them in flight, as ingest targets), vacuumed and analysed;
2. the simulator and `edithook serve`;
3. callback ingest: floor, bound, edithook (no worker running); then the receiver's
   statement-by-statement cost, and the leftovers of ingest settled;
4. listing (first and deep page) and single tasks at `--tasks`; POST /v1/tasks; 1,000
   requests waiting on one task (`--waiters`), and unrelated GETs meanwhile;
5. `edithook worker` started: task flows for completion → stored and the submit job; what
   a task costs the API and the worker in CPU over its life, and a GET (`bench.cost`), with
   py-spy's profile of both; webhooks to a local receiver: completion → received, and
   messages a second one worker delivers (`bench.webhooks`); the worker stopped;
6. the table grown to `--big-tasks` and listing measured again (unless `--skip-big`);
7. EXPLAIN ANALYZE of the listing queries at the final size; everything stopped, the
   database dropped (unless `--keep`), the table printed and written as markdown.

`--cost-only` runs step 5's cost phase alone, on an empty database: a few minutes' run to
repeat when the shared machine is quiet. `--waiters-only` runs step 4's waiter phase alone
(`--waiter-rounds` times, 5 by default there), on `--tasks` (100,000 by default there).
`--webhooks-only` runs step 5's webhook phase alone, on `--tasks` (10,000 by default there).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import database, diagnose, explain
from bench.api_phases import Timing, run_flows, run_listing, run_post
from bench.cost import run_cost
from bench.ingest import IngestPlan, run_ingest
from bench.machine import describe_machine
from bench.report import Measurements, build_rows, render_markdown, render_text, short_count
from bench.seed import HISTORY, Target, seed_tasks
from bench.stack import DB_POOL_SIZE, Stack
from bench.waiters import WAITERS, run_waiters
from bench.webhooks import MESSAGES, TASKS, run_webhooks

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATABASE_NAME = "edithook_bench"
# Enough in-flight targets per receiver for ~10,000 callbacks a second over 12 s.
MAX_TARGETS = 120_000
PROBES = 200


@dataclass(frozen=True)
class Options:
    tasks: int
    big_tasks: int | None
    duration: float
    warmup: float
    concurrency: int
    ingest_rounds: int
    deep_pages: int
    flows: int
    waiters: int
    waiter_window: float
    waiter_rounds: int
    waiters_only: bool
    cost_tasks: int
    cost_rate: float
    cost_gets: int
    cost_only: bool
    ingest_only: bool
    webhook_tasks: int
    webhook_messages: int
    webhooks_only: bool
    smoke: bool
    pool_size: int
    keep: bool
    out: Path
    admin_url: str | None
    log_level: str
    logs: Path | None


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, help="tasks for most phases (default 1,000,000)")
    parser.add_argument("--big-tasks", type=int, default=5_000_000, help="tasks for listing again")
    parser.add_argument("--skip-big", action="store_true", help="do not grow to --big-tasks")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before measuring (default: duration / 5, at most 2)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="connections for ingest")
    parser.add_argument(
        "--ingest-rounds",
        type=int,
        default=2,
        help="times ingest runs bound, edithook, edithook, bound (each run duration / 2)",
    )
    parser.add_argument(
        "--deep-pages", type=int, default=100, help="cursors followed from mid-history (100 each)"
    )
    parser.add_argument("--flows", type=int, default=30, help="tasks run to completion")
    parser.add_argument(
        "--waiters", type=int, default=WAITERS, help="requests held waiting on one task"
    )
    parser.add_argument(
        "--waiter-rounds",
        type=int,
        help="times the waiter phase runs (default 1, or 5 with --waiters-only)",
    )
    parser.add_argument(
        "--waiters-only", action="store_true", help="only the waiter phase, on --tasks tasks"
    )
    parser.add_argument("--cost-tasks", type=int, default=300, help="tasks whose CPU is measured")
    parser.add_argument("--cost-rate", type=float, default=20.0, help="their creations a second")
    parser.add_argument("--cost-gets", type=int, default=2000, help="GETs whose CPU is measured")
    parser.add_argument("--cost-only", action="store_true", help="only the CPU cost phase")
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="only callback ingest and its diagnosis (tasks seeded, no worker)",
    )
    parser.add_argument(
        "--webhook-tasks", type=int, default=TASKS, help="tasks timed to their webhook"
    )
    parser.add_argument(
        "--webhook-messages", type=int, default=MESSAGES, help="messages one worker delivers"
    )
    parser.add_argument(
        "--webhooks-only", action="store_true", help="only the webhook phase, on --tasks tasks"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds in all")
    parser.add_argument(
        "--db-pool-size",
        type=int,
        help="EDITHOOK_DB_POOL_SIZE of every server (default 10, as published; --smoke: 2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--out", type=Path, help="markdown file (bench/results/latest.md)")
    parser.add_argument("--admin-url", help="a Postgres URL where a database may be created")
    parser.add_argument("--log-level", default="info", help="EDITHOOK_LOG_LEVEL of the servers")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = 100_000 if args.waiters_only else 10_000 if args.webhooks_only else 1_000_000
    if args.waiter_rounds is None:
        args.waiter_rounds = 5 if args.waiters_only else 1
    if args.smoke:
        args.tasks, args.big_tasks, args.duration = 2_000, 5_000, 1.0
        args.deep_pages, args.flows, args.ingest_rounds = 3, 3, 1
        args.waiters = 50
        args.cost_tasks, args.cost_rate, args.cost_gets = 10, 50.0, 100
        args.webhook_tasks, args.webhook_messages = 3, 20
    big = (
        None
        if args.skip_big or args.waiters_only or args.webhooks_only or args.big_tasks <= args.tasks
        else args.big_tasks
    )
    default_out = RESULTS_DIR / (
        "smoke.md"
        if args.smoke
        else "cost.md"
        if args.cost_only
        else "ingest.md"
        if args.ingest_only
        else "waiters.md"
        if args.waiters_only
        else "webhooks.md"
        if args.webhooks_only
        else "latest.md"
    )
    return Options(
        tasks=args.tasks,
        big_tasks=big,
        duration=args.duration,
        warmup=args.warmup if args.warmup is not None else min(2.0, args.duration / 5),
        concurrency=args.concurrency,
        ingest_rounds=args.ingest_rounds,
        deep_pages=args.deep_pages,
        flows=args.flows,
        waiters=args.waiters,
        # The unrelated load's measured window around the completion: a few seconds, so that
        # a stall of the API at the completion weighs in its p99.
        waiter_window=1.0 if args.smoke else 3.0,
        waiter_rounds=args.waiter_rounds,
        waiters_only=args.waiters_only,
        cost_tasks=args.cost_tasks,
        cost_rate=args.cost_rate,
        cost_gets=args.cost_gets,
        cost_only=args.cost_only,
        ingest_only=args.ingest_only,
        webhook_tasks=args.webhook_tasks,
        webhook_messages=args.webhook_messages,
        webhooks_only=args.webhooks_only,
        smoke=args.smoke,
        # A smoke run checks that every phase works, not how fast: small pools keep two runs
        # and a test suite beside them well within Postgres's connections.
        pool_size=args.db_pool_size or (2 if args.smoke else DB_POOL_SIZE),
        keep=args.keep,
        out=args.out or default_out,
        admin_url=args.admin_url,
        log_level=args.log_level,
        logs=args.logs,
    )


def _load() -> str:
    """The machine's 1, 5 and 15-minute load averages (the machine is shared)."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min)"


def _step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _seed(
    url: str, count: int, m: Measurements, *, now: datetime, targets: int = 0, first_serial: int = 0
) -> list[Target]:
    """Add `count` tasks, vacuum and analyse; note how long it took; the ingest targets."""
    report = seed_tasks(url, count, now=now, targets=targets, first_serial=first_serial)
    started = time.perf_counter()
    database.vacuum_analyze(url, "tasks", "task_results")
    vacuum = time.perf_counter() - started
    m.notes.append(
        f"seeded {report.tasks:,} tasks and {report.results:,} result rows in"
        f" {report.seconds:.1f} s (COPY {report.copy_seconds:.1f} s, then indexes rebuilt and"
        f" results derived), then VACUUM ANALYZE in {vacuum:.1f} s"
    )
    return report.targets


def _cost(options: Options, stack: Stack, m: Measurements) -> None:
    _step(
        f"CPU per task: {options.cost_tasks} tasks at {options.cost_rate:g}/s,"
        f" {options.cost_gets} GETs, then a profile"
    )
    run_cost(stack, m, options.cost_tasks, options.cost_rate, options.cost_gets)


def run_cost_only(options: Options, stack: Stack, m: Measurements) -> None:
    """The simulator, the API and the worker on an empty database, and the cost phase."""
    _step("starting the simulator, edithook serve and edithook worker")
    stack.start_simulator()
    stack.start_api()
    stack.start_worker()
    _cost(options, stack, m)
    stack.stop_worker()


def _waiters(options: Options, stack: Stack, m: Measurements) -> None:
    rounds = f", {options.waiter_rounds} rounds" if options.waiter_rounds > 1 else ""
    _step(f"{options.waiters:,} requests waiting on one task{rounds}")
    run_waiters(
        stack, m, options.waiters, window=options.waiter_window, rounds=options.waiter_rounds
    )


def run_waiters_only(options: Options, stack: Stack, m: Measurements) -> None:
    """`--tasks` tasks, the simulator and the API, and the waiter phase."""
    _step(f"seeding {options.tasks:,} tasks")
    _seed(stack.database_url, options.tasks, m, now=datetime.now(UTC))
    _step("starting the simulator and edithook serve")
    stack.start_simulator()
    stack.start_api()
    _waiters(options, stack, m)


def _webhooks(options: Options, stack: Stack, m: Measurements) -> None:
    _step(
        f"webhooks: {options.webhook_tasks} tasks to their webhook,"
        f" {options.webhook_messages:,} messages drained by one worker"
    )
    run_webhooks(stack, m, options.webhook_tasks, options.webhook_messages)


def run_webhooks_only(options: Options, stack: Stack, m: Measurements) -> None:
    """`--tasks` tasks, the simulator, the API, the worker and the receiver, and the
    webhook phase."""
    _step(f"seeding {options.tasks:,} tasks")
    _seed(stack.database_url, options.tasks, m, now=datetime.now(UTC))
    _step("starting the simulator, the receiver, edithook serve and edithook worker")
    stack.start_simulator()
    stack.start_receiver()
    stack.start_api()
    stack.start_worker()
    _webhooks(options, stack, m)
    stack.stop_worker()


def run(options: Options, stack: Stack, m: Measurements) -> None:
    """Every phase, in order, filling `m`."""
    if options.cost_only:
        run_cost_only(options, stack, m)
        return
    if options.waiters_only:
        run_waiters_only(options, stack, m)
        return
    if options.webhooks_only:
        run_webhooks_only(options, stack, m)
        return
    url = stack.database_url
    timing = Timing(options.duration, options.warmup)
    now = datetime.now(UTC)
    middle = now - HISTORY / 2
    per_receiver = min(MAX_TARGETS, options.tasks // 5)
    _step(f"seeding {options.tasks:,} tasks ({2 * per_receiver + PROBES:,} in flight)")
    targets = _seed(url, options.tasks, m, now=now, targets=2 * per_receiver + PROBES)
    probes, targets = targets[:PROBES], targets[PROBES:]
    service_targets, bound_targets = targets[0::2], targets[1::2]

    _step("starting the simulator and edithook serve")
    stack.start_simulator()
    stack.start_api()

    _step("callback ingest: floor, bound, edithook")
    plan = IngestPlan(options.concurrency, options.duration, options.warmup, options.ingest_rounds)
    order = random.Random(7)  # noqa: S311 - a reproducible order, not a secret
    run_ingest(stack, m, service_targets, bound_targets, plan, order)
    _step("callback path, statement by statement")
    m.diagnostics += diagnose.callback_breakdown(url, probes)
    if options.ingest_only:
        return
    left = database.settle_leftovers(url)
    m.notes.append(f"after ingest: settled leftovers {left}")
    database.vacuum_analyze(url, "tasks", "task_results", "task_events")

    _step(f"listing at {short_count(options.tasks)}")
    run_listing(stack, m, options.tasks, timing, middle, options.deep_pages, get=True)
    _step("POST /v1/tasks")
    run_post(stack, m, timing)
    _waiters(options, stack, m)

    _step(f"edithook worker: {options.flows} tasks from creation to stored")
    stack.start_worker()
    run_flows(stack, m, options.flows)
    _cost(options, stack, m)
    _webhooks(options, stack, m)
    stack.stop_worker()
    _step("submission, statement by statement")
    m.diagnostics += diagnose.submission_breakdown(stack.service_env(), stack.simulator_url)
    m.diagnostics += diagnose.round_trips(url, stack.simulator_url)

    if options.big_tasks:
        extra = options.big_tasks - options.tasks
        _step(f"growing to {options.big_tasks:,} tasks")
        _seed(url, extra, m, now=now, first_serial=options.tasks)
        _step(f"listing at {short_count(options.big_tasks)}")
        run_listing(stack, m, options.big_tasks, timing, middle, options.deep_pages, get=False)
    size = options.big_tasks or options.tasks
    _step(f"EXPLAIN ANALYZE of the listing queries at {short_count(size)}")
    m.diagnostics += explain.explain_listing(url, size, m.deep_cursors.get(size))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    m = Measurements(tasks=options.tasks, big_tasks=options.big_tasks)
    # A name of its own: the run drops any database of its name first, so two runs on the
    # shared server must never share one.
    kind = (
        "_smoke"
        if options.smoke
        else "_cost"
        if options.cost_only
        else "_ingest"
        if options.ingest_only
        else "_waiters"
        if options.waiters_only
        else "_webhooks"
        if options.webhooks_only
        else ""
    )
    name = f"{DATABASE_NAME}{kind}_{secrets.token_hex(3)}"
    if options.keep:
        print(f"the database is {name}; it is kept", flush=True)
    if options.logs:
        options.logs.mkdir(parents=True, exist_ok=True)
    run_dir = options.logs or Path(tempfile.mkdtemp(prefix="edithook-bench-"))
    failed = True
    try:
        with (
            database.postgres_server(options.admin_url) as admin_url,
            database.bench_database(admin_url, name, keep=options.keep) as url,
        ):
            m.machine = describe_machine(url)
            m.machine["load average at start"] = _load()
            m.machine["run"] = (
                f"{short_count(options.tasks)} tasks, the waiter phase alone:"
                f" {options.waiters:,} waiters, {options.waiter_rounds} rounds,"
                f" EDITHOOK_LOG_LEVEL={options.log_level}"
                if options.waiters_only
                else f"{short_count(options.tasks)} tasks, the webhook phase alone:"
                f" {options.webhook_tasks} tasks to their webhook,"
                f" {options.webhook_messages:,} messages drained,"
                f" EDITHOOK_LOG_LEVEL={options.log_level}"
                if options.webhooks_only
                else f"{short_count(options.tasks)} / "
                f"{short_count(options.big_tasks) if options.big_tasks else '—'} tasks,"
                f" {options.duration:g} s per phase after {options.warmup:g} s warm-up,"
                f" {options.concurrency} connections for ingest in {options.ingest_rounds}"
                f" round{'s' if options.ingest_rounds > 1 else ''},"
                f" EDITHOOK_LOG_LEVEL={options.log_level}"
            )
            stack = Stack(url, run_dir, log_level=options.log_level, pool_size=options.pool_size)
            try:
                run(options, stack, m)
            finally:
                stack.stop_all()
                m.machine["load average at the end"] = _load()
                for role in ("api", "worker"):
                    if role in stack.peaks:
                        m.peak_rss_mb[role] = stack.peaks[role]
        failed = False
    finally:
        if failed:
            print(f"the run failed; process logs are in {run_dir}", file=sys.stderr)
        elif not options.logs:
            with contextlib.suppress(OSError):
                shutil.rmtree(run_dir)
    rows = build_rows(m)
    print()
    print(render_text(rows))
    for note in m.notes:
        print(f"  - {note}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(render_markdown(m, rows))
    print(f"\nwritten to {options.out}")
    return 0
