"""`edithook serve` and `edithook migrate` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from app.security import callback_token
from app.servers import RunningServer, bind, socket_url
from tests.helpers import ALPHA_KEY, CALLBACK_SECRET, VALID_EDIT, refusal

EDITHOOK = [sys.executable, "-m", "app.cli"]


def _env(**values: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    return {**base, **values}


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_production_commands_refuse_to_start_with_one_line_per_problem(command: str) -> None:
    """With nothing configured, serve and worker exit 2 naming every missing setting once."""
    result = subprocess.run(
        [*EDITHOOK, command], env=_env(), capture_output=True, text=True, timeout=60
    )
    problems = refusal(result, command)
    assert result.returncode == 2
    for name in (
        "DATABASE_URL",
        "EVOLINK_API_KEY",
        "PUBLIC_BASE_URL",
        "CALLBACK_SECRET",
        "API_KEYS",
    ):
        assert sum(f"EDITHOOK_{name}" in line for line in problems) == 1, name


def test_serve_refuses_unsafe_settings() -> None:
    """Plain-http public URLs, short secrets, short keys and malformed key lists are refused."""
    env = _env(
        EDITHOOK_DATABASE_URL="postgresql://u@db/x",
        EDITHOOK_EVOLINK_API_KEY="sk-1",
        EDITHOOK_PUBLIC_BASE_URL="http://hooks.example.com",
        EDITHOOK_CALLBACK_SECRET="short",
        EDITHOOK_API_KEYS="svc:abc",
    )
    result = subprocess.run(
        [*EDITHOOK, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "EDITHOOK_PUBLIC_BASE_URL must use https" in result.stderr
    assert "EDITHOOK_CALLBACK_SECRET is too short" in result.stderr
    assert "shorter than 16 characters for: svc" in result.stderr
    malformed = subprocess.run(
        [*EDITHOOK, "serve"],
        env={**env, "EDITHOOK_API_KEYS": "no-colon-here"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "EDITHOOK_API_KEYS is malformed" in malformed.stderr


def test_migrate_without_a_database_says_so() -> None:
    """migrate names the missing setting instead of failing obscurely."""
    result = subprocess.run(
        [*EDITHOOK, "migrate"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "EDITHOOK_DATABASE_URL" in result.stderr


async def test_serve_and_worker_run_a_task_and_never_log_a_callback_token(
    private_database_url: str, simulator: RunningServer, tmp_path: Path
) -> None:
    """Real `serve` and `worker` processes complete a task; their logs hold no token."""
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
    processes = [
        await asyncio.create_subprocess_exec(
            *EDITHOOK, command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for command in ("serve", "worker")
    ]
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
            task = (await api.post("/v1/tasks", json=VALID_EDIT)).json()
            settled = await api.get(f"/v1/tasks/{task['id']}", headers={"Prefer": "wait=30"})
            assert settled.json()["status"] == "completed"
            assert settled.json()["results_stored"] is True
    finally:
        outputs = []
        for process in processes:
            process.send_signal(signal.SIGTERM)
            outputs.append((await process.communicate())[0].decode())
    logs = "\n".join(outputs)
    token = callback_token(CALLBACK_SECRET, uuid.UUID(task["id"]))
    assert f"/v1/callbacks/evolink/{task['id']}/[redacted]" in logs
    assert token not in logs
