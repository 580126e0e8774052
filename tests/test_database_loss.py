"""A REST request whose database connection was lost answers 503, and the next one works.

Every backend of the service's database is terminated, as a Postgres restart would: the
engine's pooled connections are then dead, without the service knowing.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from app.main import create_app
from app.servers import RunningServer, bind, serving, socket_url
from helpers import ALPHA_KEY, make_settings

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
