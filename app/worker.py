"""The worker process: runs submissions, result copies, webhooks, reconciliation, sweeps, pruning.

The one place with a procrastinate App: it is built here from the jobs' Blueprints
(`app.tasks.jobs`, `app.results.jobs`, `app.webhooks.jobs`, `app.uploads.jobs`) and opened
by `run_worker`.
The API has none; it enqueues through its own SQL session (`app.jobs.enqueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import procrastinate

from app.heartbeat import beat
from app.resources import Resources
from app.results import jobs as result_jobs
from app.settings import Settings
from app.tasks import jobs as task_jobs
from app.uploads import jobs as upload_jobs
from app.webhooks import jobs as webhook_jobs

# How often the worker looks for due jobs without being told. New jobs wake it through
# NOTIFY, but procrastinate clears its wake-up flag after every fetch: a job committed while
# an empty fetch is in flight loses its wake-up and waits for this look (5 s by default).
# Scheduled retries (submission backoff, webhook attempts) are found only by it, too.
FETCH_POLL_SECONDS = 1.0

logger = logging.getLogger("edithook.worker")

# The heartbeat's staleness limit (app.heartbeat) spans this and a few missed beats.
MAX_RESTART_DELAY_SECONDS = 30.0


# procrastinate's pool: the worker fetches, finishes and retries jobs and beats its
# procrastinate heartbeat through it.
JOB_POOL_SIZE = 4


def create_job_app(database_url: str, *, pool_size: int = JOB_POOL_SIZE) -> procrastinate.App:
    """A procrastinate App on `database_url` (a plain postgresql:// URL) with every job."""
    connector = procrastinate.PsycopgConnector(
        conninfo=database_url, min_size=1, max_size=pool_size
    )
    job_app = procrastinate.App(connector=connector)
    for blueprint in (
        task_jobs.blueprint(),
        result_jobs.blueprint(),
        webhook_jobs.blueprint(),
        upload_jobs.blueprint(),
    ):
        # No namespace: procrastinate would prefix it to the job names, which are stored in
        # its rows and matched by our SQL (app.jobs).
        job_app.add_tasks_from(blueprint, namespace="")
    return job_app


@contextlib.asynccontextmanager
async def open_job_app(settings: Settings) -> AsyncIterator[procrastinate.App]:
    """The worker's procrastinate App, open; closed on exit."""
    job_app = create_job_app(settings.database_url)
    await job_app.open_async()
    try:
        yield job_app
    finally:
        await job_app.close_async()


async def run_worker(
    resources: Resources, stop: asyncio.Event | None = None, *, heartbeat: Path | None = None
) -> None:
    """Process jobs until `stop` is set or this coroutine is cancelled.

    Any number of workers may run against one database: procrastinate hands each job to one
    worker and defers each periodic run once. procrastinate stops its worker when it loses
    the database (its listener cannot reconnect at once); a worker that ends without being
    asked to is restarted here with a capped backoff, so an outage never leaves the process
    alive but idle. Cancellation stops it gracefully, letting running jobs finish.

    With `heartbeat`, that file is touched while procrastinate's worker runs, and removed
    when this returns. The procrastinate App is opened here, once, and closed on return.
    """
    try:
        async with open_job_app(resources.settings) as job_app:
            await _run(job_app, resources, stop, heartbeat)
    finally:
        if heartbeat is not None:
            heartbeat.unlink(missing_ok=True)  # noqa: ASYNC240


async def _run(
    job_app: procrastinate.App,
    resources: Resources,
    stop: asyncio.Event | None,
    heartbeat: Path | None,
) -> None:
    stop = stop or asyncio.Event()
    delay = 1.0
    while not stop.is_set():
        logger.info("worker started (concurrency %d)", resources.settings.worker_concurrency)
        jobs = asyncio.create_task(
            job_app.run_worker_async(
                concurrency=resources.settings.worker_concurrency,
                additional_context={"resources": resources},
                install_signal_handlers=False,
                shutdown_graceful_timeout=30,
                fetch_job_polling_interval=FETCH_POLL_SECONDS,
            )
        )
        stopping = asyncio.create_task(stop.wait())
        beating = asyncio.create_task(beat(heartbeat)) if heartbeat is not None else None
        try:
            await asyncio.wait({jobs, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if beating is not None:
                beating.cancel()
            if not jobs.done():
                jobs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await jobs
        if stop.is_set():
            return
        failure = jobs.exception() if not jobs.cancelled() else None
        logger.error(
            "worker stopped by itself (%s); restarting in %g s",
            f"{type(failure).__name__}: {failure}" if failure else "no error",
            delay,
        )
        await asyncio.sleep(delay)
        delay = min(MAX_RESTART_DELAY_SECONDS, delay * 2)
