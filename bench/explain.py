"""EXPLAIN (ANALYZE, BUFFERS) of the listing query, exactly as `GET /v1/tasks` sends it.

`list_tasks` runs in the harness's process on an engine from `app.db.create_engine`; the
statement and parameters it hands the driver are captured and explained, so the plan is the
one the service gets. Returns markdown lines.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from app.db import create_engine, create_sessionmaker
from app.tasks.service import list_tasks
from bench.seed import LIST_CLIENT


async def _explain(url: str, cursor: str | None) -> list[str]:
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    lines: list[str] = []
    try:
        for name, page_cursor in (("first page", None), ("deep page", cursor)):
            if name == "deep page" and cursor is None:
                continue
            captured.clear()
            event.listen(engine.sync_engine, "before_cursor_execute", capture)
            async with sessions() as session:
                await list_tasks(session, LIST_CLIENT, limit=20, cursor=page_cursor)
            event.remove(engine.sync_engine, "before_cursor_execute", capture)
            statement, parameters = captured[-1]
            async with engine.connect() as conn:
                plan: list[str] = []
                for _ in range(2):  # the second run, with a warm cache, is the one shown
                    result = await conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
                    )
                    plan = [str(row[0]) for row in result.all()]
            lines += [f"#### {name}", "", "```sql", statement.strip(), "```", "", "```"]
            lines += [*plan, "```", ""]
    finally:
        await engine.dispose()
    return lines


def explain_listing(url: str, size: int, cursor: str | None) -> list[str]:
    """Markdown: EXPLAIN (ANALYZE, BUFFERS) of `GET /v1/tasks`'s query, first and deep page."""
    header = [
        f"### Listing query plans at {size:,} tasks",
        "",
        f"The statement `list_tasks` sends for client `{LIST_CLIENT}`, limit 20 (the"
        " parameters are bound as the service binds them), explained twice; the second plan is"
        " shown.",
        "",
    ]
    return header + asyncio.run(_explain(url, cursor))
