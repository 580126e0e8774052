"""clients and their API keys in the database

Adds `clients` (status and the limits later enforced on them) and `api_keys` (SHA-256
digests only, with when each was made, revoked and last used). Keys from EDITHOOK_API_KEYS
are seeded into them when the API starts, not here.

Revision ID: 3b7d9e41c2a8
Revises: 3b8e5d1c7a20
Created: 2026-12-02 10:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b7d9e41c2a8"
down_revision: str | None = "3b8e5d1c7a20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'active'"), nullable=False),
        sa.Column("budget_images", sa.Integer(), nullable=True),
        sa.Column("budget_period", sa.Text(), nullable=True),
        sa.Column("budget_soft_ratio", sa.Float(), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.CheckConstraint("status IN ('active', 'disabled')", name=op.f("ck_clients_status")),
        sa.CheckConstraint(
            "budget_period IS NULL OR budget_period IN ('day', 'month')",
            name=op.f("ck_clients_budget_period"),
        ),
        sa.CheckConstraint(
            "budget_images IS NULL OR budget_images >= 0", name=op.f("ck_clients_budget_images")
        ),
        sa.CheckConstraint(
            "budget_soft_ratio IS NULL OR (budget_soft_ratio > 0 AND budget_soft_ratio <= 1)",
            name=op.f("ck_clients_budget_soft_ratio"),
        ),
        sa.CheckConstraint(
            "requests_per_minute IS NULL OR requests_per_minute >= 1",
            name=op.f("ck_clients_requests_per_minute"),
        ),
        sa.CheckConstraint(
            "max_in_flight IS NULL OR max_in_flight >= 1", name=op.f("ck_clients_max_in_flight")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_clients")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("client", sa.Text(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("octet_length(hash) = 32", name=op.f("ck_api_keys_hash")),
        sa.ForeignKeyConstraint(
            ["client"],
            ["clients.name"],
            name=op.f("fk_api_keys_client_clients"),
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("hash", name=op.f("uq_api_keys_hash")),
    )
    op.create_index("ix_api_keys_client", "api_keys", ["client", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_api_keys_client", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("clients")
