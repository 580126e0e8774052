"""job queue, polling bookkeeping and result storage

Installs procrastinate's schema (pinned to the version in requirements.lock; a later
procrastinate upgrade adds its own SQL migrations as new revisions here), records when each
task was last polled, and lets events and resolutions name edithook's own decisions.

Revision ID: 5c2a7e0d91b4
Revises: 95db3e9b0b68
Created: 2026-11-24 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "5c2a7e0d91b4"
down_revision: str | None = "95db3e9b0b68"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROCRASTINATE_SCHEMA = Path(__file__).parent.parent / "sql" / "procrastinate-3.10.0.sql"

KINDS_BEFORE = "'created', 'submission', 'callback', 'poll'"
KINDS_AFTER = "'created', 'submission', 'callback', 'poll', 'storage', 'system'"
RESOLVED_BEFORE = "'callback', 'poll', 'submission'"
RESOLVED_AFTER = "'callback', 'poll', 'submission', 'system'"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    # One driver-level script (dollar-quoted function bodies); % doubled for the driver's
    # placeholder syntax, as procrastinate's own schema installer does.
    op.get_bind().exec_driver_sql(PROCRASTINATE_SCHEMA.read_text().replace("%", "%%"))

    op.add_column("tasks", sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "tasks", sa.Column("poll_count", sa.Integer(), server_default="0", nullable=False)
    )
    # Reconciliation and the sweeper look only at tasks still in flight.
    op.create_index(
        "ix_tasks_in_flight",
        "tasks",
        ["status", "updated_at"],
        postgresql_where=sa.text("status IN ('queued', 'submitting', 'pending', 'processing')"),
    )
    op.create_index(
        "ix_task_results_pending",
        "task_results",
        ["task_id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_task_events_retained",
        "task_events",
        ["created_at"],
        postgresql_where=sa.text("body IS NOT NULL"),
    )
    op.create_index(
        "ix_tasks_finished_at",
        "tasks",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    _replace_check("task_events", "kind", f"kind IN ({KINDS_AFTER})")
    _replace_check(
        "tasks", "resolved_by", f"resolved_by IS NULL OR resolved_by IN ({RESOLVED_AFTER})"
    )


def downgrade() -> None:
    op.execute("DELETE FROM task_events WHERE kind IN ('storage', 'system')")
    op.execute("UPDATE tasks SET resolved_by = NULL WHERE resolved_by = 'system'")
    _replace_check(
        "tasks", "resolved_by", f"resolved_by IS NULL OR resolved_by IN ({RESOLVED_BEFORE})"
    )
    _replace_check("task_events", "kind", f"kind IN ({KINDS_BEFORE})")
    op.drop_index("ix_tasks_finished_at", table_name="tasks")
    op.drop_index("ix_task_events_retained", table_name="task_events")
    op.drop_index("ix_task_results_pending", table_name="task_results")
    op.drop_index("ix_tasks_in_flight", table_name="tasks")
    op.drop_column("tasks", "poll_count")
    op.drop_column("tasks", "polled_at")
    op.execute(
        """
        DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
            procrastinate_jobs, procrastinate_workers CASCADE;
        DO $$
        DECLARE fn record;
        BEGIN
            FOR fn IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                      JOIN pg_namespace n ON n.oid = p.pronamespace
                      WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%'
            LOOP
                EXECUTE 'DROP FUNCTION ' || fn.signature || ' CASCADE';
            END LOOP;
        END $$;
        DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
            procrastinate_job_status CASCADE;
        """
    )
