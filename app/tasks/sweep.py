"""Finding work stuck between steps, and pruning what retention allows.

Jobs are enqueued in the transaction that needs them, so the sweeper is a second line: it
catches a job that failed for good, one lost with a crashed worker, or data written by hand.
A parked task (waiting for a slot of its client's `max_in_flight`) has no job by design:
the dispatcher, not the sweeper, gives it one (`app.tasks.dispatch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from procrastinate.manager import JobManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.jobs import STORE_RESULTS, SUBMIT_TASK, enqueue
from app.vocabulary import ResultStatus, TaskStatus

logger = logging.getLogger("edithook.sweep")

# A queued task or a pending result this old without a live job is stuck.
STUCK_AFTER = timedelta(seconds=60)
# Workers silent this long are presumed dead and their jobs run again.
STALLED_WORKER_SECONDS = 60
FINISHED_JOBS_KEPT_HOURS = 72
PRUNE_BATCH = 5000

# Statuses from the enums (no input), written as literals so that partial indexes serve them.
STUCK_SUBMISSIONS = text(f"""
    SELECT t.id FROM tasks t
    WHERE t.status = '{TaskStatus.QUEUED.value}' AND t.updated_at < :cutoff
      AND t.parked_at IS NULL
      AND NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs j
        WHERE j.task_name = :job AND j.status IN ('todo', 'doing')
          AND j.args->>'task_id' = t.id::text)
    LIMIT 500
""")  # noqa: S608
STUCK_RESULT_COPIES = text(f"""
    SELECT DISTINCT r.task_id FROM task_results r JOIN tasks t ON t.id = r.task_id
    WHERE r.status = '{ResultStatus.PENDING.value}'
      AND t.status = '{TaskStatus.COMPLETED.value}' AND r.created_at < :cutoff
      AND NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs j
        WHERE j.task_name = :job AND j.status IN ('todo', 'doing')
          AND j.args->>'task_id' = r.task_id::text)
    LIMIT 500
""")  # noqa: S608


@dataclass
class SweepReport:
    submissions: int = 0
    result_copies: int = 0
    stalled_jobs: int = 0


async def sweep(sessions: async_sessionmaker[AsyncSession], manager: JobManager) -> SweepReport:
    """Re-enqueue stuck submissions and result copies (one transaction); then rerun, through
    procrastinate's `manager`, the jobs of dead workers and drop its old finished jobs."""
    report = SweepReport()
    cutoff = datetime.now(UTC) - STUCK_AFTER
    async with transaction(sessions) as session:
        queued = await session.execute(STUCK_SUBMISSIONS, {"cutoff": cutoff, "job": SUBMIT_TASK})
        for (task_id,) in queued.all():
            await enqueue(session, SUBMIT_TASK, {"task_id": str(task_id)})
            report.submissions += 1
        pending = await session.execute(
            STUCK_RESULT_COPIES, {"cutoff": cutoff, "job": STORE_RESULTS}
        )
        for (task_id,) in pending.all():
            await enqueue(
                session, STORE_RESULTS, {"task_id": str(task_id)}, lock=f"results:{task_id}"
            )
            report.result_copies += 1

    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_WORKER_SECONDS):
        await manager.retry_job(job)
        report.stalled_jobs += 1
    await manager.delete_old_jobs(nb_hours=FINISHED_JOBS_KEPT_HOURS)
    if report.submissions or report.result_copies or report.stalled_jobs:
        logger.warning("sweep found stuck work: %s", report)
    return report


async def prune_event_bodies(
    sessions: async_sessionmaker[AsyncSession], *, retention_days: int
) -> int:
    """Drop raw bodies and headers of events older than `retention_days`; the events stay.
    Each batch is a transaction of its own, so that none holds many rows locked for long."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    pruned = 0
    while True:
        async with transaction(sessions) as session:
            result = await session.execute(
                text(
                    "UPDATE task_events SET body = NULL, headers = NULL WHERE id IN ("
                    " SELECT id FROM task_events WHERE body IS NOT NULL AND created_at < :cutoff"
                    " LIMIT :batch)"
                ),
                {"cutoff": cutoff, "batch": PRUNE_BATCH},
            )
        count = int(getattr(result, "rowcount", 0) or 0)
        pruned += count
        if count < PRUNE_BATCH:
            return pruned
