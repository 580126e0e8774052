"""`edithook serve` stops promptly with a task stream open."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import psycopg

from app.servers import RunningServer, bind, socket_url
from tests.helpers import ALPHA_KEY, CALLBACK_SECRET
from tests.processes.test_cli import EDITHOOK, _env


async def test_serve_ends_open_streams_when_told_to_stop(
    private_database_url: str, simulator: RunningServer, tmp_path: Path
) -> None:
    """SIGTERM with a stream open on a task still in flight: the stream ends cleanly (the
    client resumes elsewhere with Last-Event-ID) and the process exits, rather than waiting
    on it or cutting it with an error."""
    task_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(private_database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tasks (id, client, status, progress, request, metadata, request_hash)"
            " VALUES (%s, 'alpha', 'processing', 50, '{}', '{}', 'h')",
            (task_id,),
        )
    sock = bind()
    public_url = socket_url(sock)
    port = sock.getsockname()[1]
    sock.close()
    env = _env(
        EDITHOOK_ENVIRONMENT="development",
        EDITHOOK_DATABASE_URL=private_database_url,
        EDITHOOK_EVOLINK_BASE_URL=simulator.url,
        EDITHOOK_EVOLINK_API_KEY="sk-test-key",
        EDITHOOK_PUBLIC_BASE_URL=public_url,
        EDITHOOK_CALLBACK_SECRET=CALLBACK_SECRET,
        EDITHOOK_API_KEYS=f"alpha:{ALPHA_KEY}",
        EDITHOOK_HOST="127.0.0.1",
        EDITHOOK_PORT=str(port),
        EDITHOOK_STORAGE_URL=str(tmp_path / "results"),
    )
    serve = await asyncio.create_subprocess_exec(
        *EDITHOOK, "serve", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with httpx.AsyncClient(
            base_url=public_url, headers={"Authorization": f"Bearer {ALPHA_KEY}"}, timeout=30
        ) as api:
            for _ in range(200):
                try:
                    if (await api.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            async with api.stream("GET", f"/v1/tasks/{task_id}/stream") as live:
                lines = live.aiter_lines()
                first = [await anext(lines) for _ in range(4)]  # id, event, data, blank
                assert "event: task" in first
                serve.send_signal(signal.SIGTERM)
                async with asyncio.timeout(20):
                    rest = [line async for line in lines]
        assert not [line for line in rest if line.startswith("event:")]
        async with asyncio.timeout(20):
            output = (await serve.communicate())[0].decode()
        # uvicorn ends by raising the signal it was stopped with again.
        assert serve.returncode in (0, -signal.SIGTERM), output
        assert '"level": "error"' not in output, output
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
