"""The worker process: runs submissions, result copies, reconciliation, the sweeper, pruning."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.resources import Resources

logger = logging.getLogger("edithook.worker")

MAX_RESTART_DELAY_SECONDS = 30.0


async def run_worker(resources: Resources, stop: asyncio.Event | None = None) -> None:
    """Process jobs until `stop` is set or this coroutine is cancelled.

    Any number of workers may run against one database: procrastinate hands each job to one
    worker and defers each periodic run once. procrastinate stops its worker when it loses
    the database (its listener cannot reconnect at once); a worker that ends without being
    asked to is restarted here with a capped backoff, so an outage never leaves the process
    alive but idle. Cancellation stops it gracefully, letting running jobs finish.
    """
    stop = stop or asyncio.Event()
    delay = 1.0
    while not stop.is_set():
        logger.info("worker started (concurrency %d)", resources.settings.worker_concurrency)
        jobs = asyncio.create_task(
            resources.job_app.run_worker_async(
                concurrency=resources.settings.worker_concurrency,
                additional_context={"resources": resources},
                install_signal_handlers=False,
                shutdown_graceful_timeout=30,
            )
        )
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({jobs, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
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
