"""Log lines from the database's side: what an engine error carries into a log."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.db import create_engine


async def test_a_failed_statements_error_text_leaves_out_its_parameters(database_url: str) -> None:
    """An engine error, as a job's failure logs it whole, names no parameter of the statement."""
    marker = "marker-prompt-9d3e"
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as caught:
                await connection.execute(text("SELECT CAST(:p AS text), 1 / 0"), {"p": marker})
    finally:
        await engine.dispose()
    assert "division by zero" in str(caught.value)
    assert marker not in str(caught.value)
