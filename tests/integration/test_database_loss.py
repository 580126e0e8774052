"""A REST request whose database connection was lost answers 503, and the next one works.

Every backend of the service's database is terminated, as a Postgres restart would: the
engine's pooled connections are then dead, without the service knowing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import psycopg

from app.main import create_app
from app.security import callback_token
from app.servers import RunningServer, bind, serving, socket_url
from tests.helpers import ALPHA_KEY, CALLBACK_SECRET, VALID_EDIT, make_settings

TERMINATE_OTHERS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


async def test_a_lost_connection_answers_503_with_retry_after_then_recovers(
    private_database_url: str, simulator: RunningServer, tmp_path: Path
) -> None:
    sock = bind()
    settings = make_settings(
        private_database_url, simulator.url, socket_url(sock), storage_url=str(tmp_path)
    )
    headers = {"Authorization": f"Bearer {ALPHA_KEY}"}
    async with (
        serving(create_app(settings), sock=sock) as running,
        httpx.AsyncClient(base_url=running.url, headers=headers, timeout=30) as api,
    ):
        assert (await api.get("/v1/tasks")).status_code == 200
        async with await psycopg.AsyncConnection.connect(
            private_database_url, autocommit=True
        ) as admin:
            terminated = await (await admin.execute(TERMINATE_OTHERS)).fetchone()
        assert terminated is not None
        assert terminated[0] >= 1

        lost = await api.get("/v1/tasks")
        assert lost.status_code == 503, lost.text
        assert lost.headers["retry-after"] == "1"
        assert lost.headers["content-type"] == "application/problem+json"
        assert lost.json()["detail"] == "The database connection was lost; retry."

        again = await api.get("/v1/tasks")
        assert again.status_code == 200, again.text
        assert again.json()["items"] == []


async def test_a_callback_that_meets_lost_connections_is_still_recorded(
    private_database_url: str, simulator: RunningServer, tmp_path: Path
) -> None:
    """The writer takes a fresh connection when its pooled ones died with a restart, so the
    callback is recorded rather than refused (a real outage is a 503: tests/processes/faults)."""
    sock = bind()
    settings = make_settings(
        private_database_url, simulator.url, socket_url(sock), storage_url=str(tmp_path)
    )
    headers = {"Authorization": f"Bearer {ALPHA_KEY}"}
    async with (
        serving(create_app(settings), sock=sock) as running,
        httpx.AsyncClient(base_url=running.url, headers=headers, timeout=30) as api,
    ):
        created = await api.post("/v1/tasks", json=VALID_EDIT)
        assert created.status_code == 202, created.text
        task_id = uuid.UUID(created.json()["id"])
        token = callback_token(CALLBACK_SECRET, task_id)
        async with await psycopg.AsyncConnection.connect(
            private_database_url, autocommit=True
        ) as admin:
            terminated = await (await admin.execute(TERMINATE_OTHERS)).fetchone()
        assert terminated is not None
        assert terminated[0] >= 1

        body = {"id": "task-unified-1", "object": "image.generation.task", "status": "failed"}
        lost = await api.post(f"/v1/callbacks/evolink/{task_id}/{token}", json=body)
        assert lost.status_code == 200, lost.text
    async with await psycopg.AsyncConnection.connect(private_database_url) as check:
        cursor = await check.execute(
            "SELECT count(*) FROM task_events WHERE task_id = %s AND kind = 'callback'",
            (task_id,),
        )
        assert await cursor.fetchone() == (1,)
