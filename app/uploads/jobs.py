"""The uploads' job: deleting them after their retention, on a Blueprint of its own.

`app.worker` adds `blueprint()` to the worker's procrastinate App; nothing else runs it.
"""

from __future__ import annotations

import procrastinate

from app.jobs import PRUNE_UPLOADS, resources_of
from app.uploads import retention


async def prune_uploads_job(context: procrastinate.JobContext, timestamp: int) -> None:
    resources = resources_of(context)
    await retention.prune_uploads(
        resources.sessions,
        resources.storage,
        retention_hours=resources.settings.upload_retention_hours,
    )


def blueprint() -> procrastinate.Blueprint:
    """A new Blueprint per call (procrastinate ties a task to the App it is added to)."""
    jobs = procrastinate.Blueprint()
    # Every five minutes: an upload outlives its retention by at most that; a queueing lock
    # keeps a backlog from piling up runs.
    task = jobs.task(name=PRUNE_UPLOADS, pass_context=True, queueing_lock=PRUNE_UPLOADS)(
        prune_uploads_job
    )
    jobs.periodic(cron="*/5 * * * *")(task)
    return jobs
