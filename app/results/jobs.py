"""The job that copies a completed task's result images into our storage, and its Blueprint.

`app.worker` adds `blueprint()` to the worker's procrastinate App; nothing else runs it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import procrastinate
import structlog

from app.jobs import STORE_RESULTS, JobRetry, RetryLater, resources_of
from app.results.copy import store_task_results
from app.security import callback_token


async def store_results_job(context: procrastinate.JobContext, task_id: str) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id)
    resources = resources_of(context)
    settings = resources.settings
    task = uuid.UUID(task_id)
    report = await store_task_results(
        resources.pool,
        resources.sessions,
        resources.evolink,
        resources.storage,
        resources.download_http,
        task,
        max_bytes=settings.result_max_bytes,
        allow_loopback=resources.provider_on_loopback,
        link_ttl=timedelta(hours=settings.result_link_ttl_hours),
        callback_token=callback_token(settings.callback_secret.get_secret_value(), task),
    )
    if report.retry_in is not None:
        raise RetryLater(f"{report.pending} result(s) not stored yet", report.retry_in)


def blueprint() -> procrastinate.Blueprint:
    """The result job on a Blueprint of its own; a new one per call (see app.tasks.jobs)."""
    jobs = procrastinate.Blueprint()
    jobs.task(name=STORE_RESULTS, pass_context=True, retry=JobRetry())(store_results_job)
    return jobs
