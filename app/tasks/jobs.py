"""The task jobs: thin wrappers that take ids and call the services, and their Blueprint.

Each job hands its body only what it uses of the worker's `Resources` (pools, clients,
settings values); the bodies open their own short transactions, none held across a call to
the provider. `app.worker` adds `blueprint()` to the worker's procrastinate App; nothing
else runs them.
"""

from __future__ import annotations

import uuid

import procrastinate
import structlog

from app.jobs import PRUNE, RECONCILE, SUBMIT_TASK, SWEEP, JobRetry, RetryLater, resources_of
from app.tasks import reconcile, submission, sweep
from app.uploads.inputs import InputLinks


async def submit_task_job(context: procrastinate.JobContext, task_id: str) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id)
    resources = resources_of(context)
    settings = resources.settings
    task = uuid.UUID(task_id)
    delay = await submission.submit_task(
        resources.pool,
        resources.sessions,
        resources.evolink,
        task,
        callback_url=submission.callback_url(settings, task),
        attempts=settings.submit_attempts,
        unknown_timeout_seconds=settings.submit_unknown_timeout_seconds,
        attempt=context.job.attempts,
        inputs=InputLinks.from_settings(settings, resources.storage),
    )
    if delay is not None:
        raise RetryLater("the provider created nothing; trying again", delay)


async def reconcile_job(context: procrastinate.JobContext, timestamp: int) -> None:
    resources = resources_of(context)
    await reconcile.reconcile(
        resources.pool, resources.sessions, resources.evolink, resources.settings
    )


async def sweep_job(context: procrastinate.JobContext, timestamp: int) -> None:
    await sweep.sweep(resources_of(context).sessions, context.app.job_manager)


async def prune_job(context: procrastinate.JobContext, timestamp: int) -> None:
    resources = resources_of(context)
    await sweep.prune_event_bodies(
        resources.sessions, retention_days=resources.settings.event_retention_days
    )


def blueprint() -> procrastinate.Blueprint:
    """The task jobs and their schedules, on a Blueprint of their own.

    A new one per call: procrastinate ties each task to the App it is added to (periodic
    runs are deferred through that App), so two Apps in one process must not share tasks.
    """
    jobs = procrastinate.Blueprint()
    jobs.task(name=SUBMIT_TASK, pass_context=True, retry=JobRetry())(submit_task_job)
    # Every 5 s, 30 s and hourly; procrastinate defers each periodic run once across all
    # workers, and a queueing lock per job keeps a backlog from piling up runs of one job.
    for name, cron, function in (
        # Six fields: the seconds come last.
        (RECONCILE, "* * * * * */5", reconcile_job),
        (SWEEP, "* * * * * */30", sweep_job),
        (PRUNE, "17 * * * *", prune_job),
    ):
        task = jobs.task(name=name, pass_context=True, queueing_lock=name)(function)
        jobs.periodic(cron=cron)(task)
    return jobs
