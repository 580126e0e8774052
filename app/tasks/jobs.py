"""The task jobs: thin wrappers that take ids and call the services, and their Blueprint.

`app.worker` adds `blueprint()` to the worker's procrastinate App; nothing else runs them.
"""

from __future__ import annotations

import uuid

import procrastinate
import structlog

from app.jobs import PRUNE, RECONCILE, SUBMIT_TASK, SWEEP, JobRetry, RetryLater, resources_of
from app.tasks import reconcile, submission, sweep


async def submit_task_job(context: procrastinate.JobContext, task_id: str) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id)
    delay = await submission.submit_task(
        resources_of(context), uuid.UUID(task_id), attempt=context.job.attempts
    )
    if delay is not None:
        raise RetryLater("the provider created nothing; trying again", delay)


async def reconcile_job(context: procrastinate.JobContext, timestamp: int) -> None:
    await reconcile.reconcile(resources_of(context))


async def sweep_job(context: procrastinate.JobContext, timestamp: int) -> None:
    await sweep.sweep(resources_of(context), context.app)


async def prune_job(context: procrastinate.JobContext, timestamp: int) -> None:
    await sweep.prune_event_bodies(resources_of(context))


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
