"""The worker's procrastinate App, assembled from the jobs' Blueprints."""

from __future__ import annotations

from app.jobs import (
    DELIVER_WEBHOOK,
    PRUNE,
    PRUNE_UPLOADS,
    RECONCILE,
    RECOVER_WEBHOOKS,
    STORE_RESULTS,
    SUBMIT_TASK,
    SWEEP,
    SWEEP_WEBHOOKS,
)
from app.worker import create_job_app

URL = "postgresql://nobody@127.0.0.1:9/none"


def test_every_job_runs_under_the_name_the_database_stores() -> None:
    """Blueprints add no prefix: enqueued rows and the sweeper's SQL name jobs as app.jobs does."""
    job_app = create_job_app(URL)
    # procrastinate's own job is there twice, under its name and its alias.
    ours = {name for name in job_app.tasks if "procrastinate." not in name}
    assert ours == {
        SUBMIT_TASK,
        STORE_RESULTS,
        RECONCILE,
        SWEEP,
        PRUNE,
        DELIVER_WEBHOOK,
        RECOVER_WEBHOOKS,
        SWEEP_WEBHOOKS,
        PRUNE_UPLOADS,
    }
    periodic = {task.task.name for task in job_app.periodic_registry.periodic_tasks.values()}
    assert periodic == {RECONCILE, SWEEP, PRUNE, SWEEP_WEBHOOKS, PRUNE_UPLOADS}


def test_two_apps_in_one_process_keep_their_own_jobs() -> None:
    """A second App (a test's, a second worker's) does not take over the first App's jobs."""
    first = create_job_app(URL)
    second = create_job_app(URL)
    for name in (SUBMIT_TASK, STORE_RESULTS, RECONCILE):
        assert first.tasks[name].blueprint is first
        assert second.tasks[name].blueprint is second
