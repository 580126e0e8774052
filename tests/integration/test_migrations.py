"""The migrations build exactly the schema the models describe, and undo cleanly."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app import models  # noqa: F401 - registers the tables
from app.db import Base
from app.migrate import downgrade, include_object, upgrade
from tests.helpers import with_database


@pytest.fixture
def scratch_url(admin_url: str) -> Iterator[str]:
    name = f"edithook_mig_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _diff(url: str) -> list[object]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_object": include_object}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_models_and_migrations_agree(database_url: str) -> None:
    """Autogenerate finds nothing to change in a database migrated to head."""
    assert _diff(database_url) == []


def test_every_migration_downgrades_and_upgrades_again(scratch_url: str) -> None:
    """head → base → head works, and leaves the schema matching the models."""
    upgrade(scratch_url)
    downgrade(scratch_url, "base")
    with psycopg.connect(scratch_url) as conn:
        leftovers = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_name <> 'alembic_version'"
            " UNION ALL SELECT count(*) FROM pg_proc WHERE proname LIKE 'procrastinate%'"
            " UNION ALL SELECT count(*) FROM pg_type WHERE typname LIKE 'procrastinate%'"
        ).fetchall()
    assert leftovers == [(0,), (0,), (0,)]
    upgrade(scratch_url)
    assert _diff(scratch_url) == []
