"""The worker process: runs submissions, result copies, reconciliation, the sweeper, pruning."""

from __future__ import annotations

import logging

from app.resources import Resources

logger = logging.getLogger("edithook.worker")


async def run_worker(resources: Resources, *, install_signal_handlers: bool = True) -> None:
    """Process jobs until stopped (SIGINT/SIGTERM when handlers are installed, or cancellation).

    Any number of workers may run against one database: procrastinate hands each job to one
    worker and defers each periodic run once.
    """
    logger.info("worker started (concurrency %d)", resources.settings.worker_concurrency)
    await resources.job_app.run_worker_async(
        concurrency=resources.settings.worker_concurrency,
        additional_context={"resources": resources},
        install_signal_handlers=install_signal_handlers,
        # Wait for running jobs on shutdown rather than abandoning them mid-way.
        shutdown_graceful_timeout=30,
    )
