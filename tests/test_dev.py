"""`edithook dev` (what `make run` starts) works on a machine with nothing configured."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from app.cli import DEV_CALLBACK_SECRET
from app.security import callback_token
from app.servers import bind
from helpers import VALID_EDIT, wait_for_task


async def test_dev_runs_a_task_end_to_end_on_embedded_postgres(tmp_path: Path) -> None:
    """With no EDITHOOK_* settings: embedded Postgres, simulator, API; a task completes."""
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    env["EDITHOOK_PORT"] = str(port)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "dev",
        "--data-dir",
        str(tmp_path / "pg"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer dev-key"}
        ) as api:
            for _ in range(600):
                try:
                    if (await api.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            created = await api.post("/v1/tasks", json={**VALID_EDIT, "n": 2})
            assert created.status_code == 202, created.text
            task = await wait_for_task(api, created.json()["id"], {"completed"})
            results = (await api.get(f"/v1/tasks/{task['id']}/results")).json()
            assert len(results["items"]) == 2
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    logs = output.decode()
    assert "Authorization: Bearer dev-key" in logs
    assert callback_token(DEV_CALLBACK_SECRET, uuid.UUID(task["id"])) not in logs
    assert process.returncode == 0
