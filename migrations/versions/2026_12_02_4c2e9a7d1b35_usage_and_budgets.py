"""what each task costs, and budgets per client and period

Adds to `tasks` the images reserved at create (`n`) and charged at the end, and the budget
period row its reservation was made in; adds `client_spend` (one row per client with a
budget and period: reserved and charged images, when the soft threshold was crossed); lets
a webhook message be about a client rather than a task (`client.budget_threshold`).

Existing tasks get `images_reserved` from their request's `n` (default 1), and, when they
have ended, `images_charged`: the result rows of a completed task, none otherwise.

Revision ID: 4c2e9a7d1b35
Revises: 3b7d9e41c2a8
Created: 2026-12-02 12:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4c2e9a7d1b35"
down_revision: str | None = "3b7d9e41c2a8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TYPES_BEFORE = "'task.cancelled', 'task.failed', 'task.submitted', 'task.succeeded'"
TYPES_AFTER = "'client.budget_threshold', " + TYPES_BEFORE


def upgrade() -> None:
    op.create_table(
        "client_spend",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("client", sa.Text(), nullable=False),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reserved", sa.Integer(), server_default="0", nullable=False),
        sa.Column("charged", sa.Integer(), server_default="0", nullable=False),
        sa.Column("threshold_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.CheckConstraint("period IN ('day', 'month')", name=op.f("ck_client_spend_period")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_client_spend_reserved")),
        sa.CheckConstraint("charged >= 0", name=op.f("ck_client_spend_charged")),
        sa.ForeignKeyConstraint(
            ["client"],
            ["clients.name"],
            name=op.f("fk_client_spend_client_clients"),
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_spend")),
        sa.UniqueConstraint(
            "client",
            "period",
            "period_start",
            name=op.f("uq_client_spend_client_period_period_start"),
        ),
    )
    # A constant default: no table rewrite; only the tasks that asked for another n change.
    op.add_column(
        "tasks",
        sa.Column("images_reserved", sa.SmallInteger(), server_default="1", nullable=False),
    )
    op.add_column("tasks", sa.Column("images_charged", sa.SmallInteger(), nullable=True))
    op.add_column("tasks", sa.Column("spend_id", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE tasks SET
            images_reserved = coalesce((request ->> 'n')::smallint, 1),
            images_charged = CASE
                WHEN status = 'completed'
                    THEN (SELECT count(*) FROM task_results r WHERE r.task_id = tasks.id)
                WHEN status IN ('failed', 'cancelled') THEN 0
            END
        WHERE coalesce((request ->> 'n')::smallint, 1) <> 1
           OR status IN ('completed', 'failed', 'cancelled')
        """
    )
    op.create_check_constraint(
        op.f("ck_tasks_images_reserved"), "tasks", "images_reserved BETWEEN 0 AND 6"
    )
    op.create_check_constraint(
        op.f("ck_tasks_images_charged"),
        "tasks",
        "images_charged IS NULL OR images_charged BETWEEN 0 AND 6",
    )
    op.create_foreign_key(
        op.f("fk_tasks_spend_id_client_spend"),
        "tasks",
        "client_spend",
        ["spend_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.alter_column("webhook_messages", "task_id", existing_type=sa.Uuid(), nullable=True)
    op.drop_constraint(op.f("ck_webhook_messages_type"), "webhook_messages", type_="check")
    op.create_check_constraint(
        op.f("ck_webhook_messages_type"), "webhook_messages", f"type IN ({TYPES_AFTER})"
    )


def downgrade() -> None:
    op.execute("DELETE FROM webhook_messages WHERE task_id IS NULL")
    op.drop_constraint(op.f("ck_webhook_messages_type"), "webhook_messages", type_="check")
    op.create_check_constraint(
        op.f("ck_webhook_messages_type"), "webhook_messages", f"type IN ({TYPES_BEFORE})"
    )
    op.alter_column("webhook_messages", "task_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_constraint(op.f("fk_tasks_spend_id_client_spend"), "tasks", type_="foreignkey")
    op.drop_constraint(op.f("ck_tasks_images_charged"), "tasks", type_="check")
    op.drop_constraint(op.f("ck_tasks_images_reserved"), "tasks", type_="check")
    op.drop_column("tasks", "spend_id")
    op.drop_column("tasks", "images_charged")
    op.drop_column("tasks", "images_reserved")
    op.drop_table("client_spend")
