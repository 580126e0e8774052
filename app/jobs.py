"""Background jobs on procrastinate: their names, how they are enqueued, how they retry.

A leaf: anything may import it, and it imports nothing of edithook's. Jobs are declared where
they live (`app.tasks.jobs`, `app.results.jobs`, each a procrastinate Blueprint) and put
together into the worker's App in `app.worker`; no other process has a procrastinate App.

Jobs live in the same Postgres as the tasks. They are enqueued inside the transaction that
makes them necessary (a new task, a completion), so a committed change never lacks its job
and a rolled-back one never has a stray job; the sweeper covers anything else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import procrastinate
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from app.resources import Resources

QUEUE = "default"
SUBMIT_TASK = "submit_task"
STORE_RESULTS = "store_results"
RECONCILE = "reconcile"
SWEEP = "sweep"
PRUNE = "prune"
DELIVER_WEBHOOK = "deliver_webhook"
RECOVER_WEBHOOKS = "recover_webhooks"
SWEEP_WEBHOOKS = "sweep_webhooks"
PRUNE_UPLOADS = "prune_uploads"

# Webhook deliveries yield to the task pipeline: a worker takes a submission or a result
# copy before any delivery that is due (procrastinate fetches the highest priority first),
# so a fan-out to many endpoints, or many failing ones, never delays the edits themselves.
WEBHOOK_PRIORITY = -1

# Job names are stored in procrastinate's rows and matched by SQL (the sweeper, enqueue):
# they are a contract with the database, kept exactly as they are.
# Failures a job did not foresee (a database outage, a bug) are retried this many times.
UNEXPECTED_FAILURE_ATTEMPTS = 10


class RetryLater(Exception):
    """Raised by a job to run again after `delay` seconds (a foreseen, temporary failure)."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = max(0.1, delay)


class JobRetry(BaseRetryStrategy):
    """RetryLater says when; anything else backs off exponentially, a bounded number of times."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, RetryLater):
            delay = exception.delay
        elif job.attempts + 1 >= UNEXPECTED_FAILURE_ATTEMPTS:
            return None
        else:
            delay = min(300.0, float(2**job.attempts))
        return RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=delay))


def resources_of(context: procrastinate.JobContext) -> Resources:
    """The worker's resources, handed to every job through the job context."""
    resources: Resources = context.additional_context["resources"]
    return resources


async def enqueue(
    session: AsyncSession,
    task_name: str,
    args: dict[str, Any],
    *,
    lock: str | None = None,
    scheduled_at: datetime | None = None,
    priority: int = 0,
) -> None:
    """Add a job in the session's transaction, through procrastinate's own SQL function."""
    await session.execute(
        text(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task_name, :priority, :lock,"
            " NULL, CAST(:args AS jsonb), :scheduled_at)::procrastinate_job_to_defer_v1])"
        ),
        {
            "queue": QUEUE,
            "task_name": task_name,
            "lock": lock,
            "args": json.dumps(args),
            "scheduled_at": scheduled_at,
            "priority": priority,
        },
    )
