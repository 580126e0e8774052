"""cancel: a client's own cancel, and a task's cancel_at

Lets a task be resolved, and an event be caused, by its client (`client`: a cancel), and
adds `cancel_at`, when a task still not submitted is cancelled (`cancel_after_seconds` on
create), with the partial index the reconciler looks for such tasks by.

Revision ID: 3b8e5d1c7a20
Revises: fc59d0f9a493
Created: 2026-12-02 10:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b8e5d1c7a20"
down_revision: str | None = "fc59d0f9a493"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_BEFORE = "'callback', 'created', 'poll', 'storage', 'submission', 'system'"
KINDS_AFTER = "'callback', 'client', 'created', 'poll', 'storage', 'submission', 'system'"
RESOLVED_BEFORE = "'callback', 'poll', 'submission', 'system'"
RESOLVED_AFTER = "'callback', 'client', 'poll', 'submission', 'system'"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    _replace_check("task_events", "kind", f"kind IN ({KINDS_AFTER})")
    _replace_check(
        "tasks", "resolved_by", f"resolved_by IS NULL OR resolved_by IN ({RESOLVED_AFTER})"
    )
    op.add_column("tasks", sa.Column("cancel_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_tasks_cancel_at",
        "tasks",
        ["cancel_at"],
        postgresql_where=sa.text("status = 'queued' AND cancel_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_cancel_at", table_name="tasks")
    op.drop_column("tasks", "cancel_at")
    # Rows naming the client cannot stay under the older constraints.
    op.execute("UPDATE tasks SET resolved_by = 'system' WHERE resolved_by = 'client'")
    op.execute("UPDATE task_events SET kind = 'system' WHERE kind = 'client'")
    _replace_check(
        "tasks", "resolved_by", f"resolved_by IS NULL OR resolved_by IN ({RESOLVED_BEFORE})"
    )
    _replace_check("task_events", "kind", f"kind IN ({KINDS_BEFORE})")
