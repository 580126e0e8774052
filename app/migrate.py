"""Apply Alembic migrations from code: `edithook migrate`, `edithook dev` and the tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave procrastinate's tables to its own SQL; they are installed, not modelled."""
    table = getattr(obj, "table", obj) if type_ in ("index", "column", "unique_constraint") else obj
    table_name = getattr(table, "name", name) or ""
    return not str(table_name).startswith("procrastinate_")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database at `database_url` to `revision` (blocking)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """`upgrade` from inside a running event loop (env.py runs its own loop)."""
    await asyncio.to_thread(upgrade, database_url, revision)
