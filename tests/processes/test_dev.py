"""`edithook dev` (what `make run` starts) works on a machine with nothing configured."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from app.cli import DEV_CALLBACK_SECRET
from app.security import callback_token
from app.servers import bind
from tests.helpers import VALID_EDIT, refusal, wait_for_task
from tests.images import encoded


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
            # An upload, fetched by the simulator through its signed link.
            uploaded = await api.post(
                "/v1/uploads", files={"file": ("in.png", encoded("PNG", 640, 480), "image/png")}
            )
            assert uploaded.status_code == 201, uploaded.text
            edit = {"prompt": "make it snow", "image_ids": [uploaded.json()["id"]]}
            from_upload = await api.post("/v1/tasks", json=edit)
            assert from_upload.status_code == 202, from_upload.text
            done = await wait_for_task(api, from_upload.json()["id"], {"completed", "failed"})
            assert done["status"] == "completed", done["error"]
            # A person at a terminal, as the banner says: a local file uploaded, edited, saved.
            (tmp_path / "photo.png").write_bytes(encoded("PNG", 640, 480))
            client = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "app.cli", "edit", "photo.png", "--prompt", "snow"),
                cwd=tmp_path,
                env={**env, "EDITHOOK_URL": str(api.base_url), "EDITHOOK_KEY": "dev-key"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(client.communicate(), 60)
            assert client.returncode == 0, err.decode()
            saved = out.decode().splitlines()[-1].removeprefix("saved ")
            assert (tmp_path / saved).stat().st_size > 0
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    logs = output.decode()
    assert "Authorization: Bearer dev-key" in logs
    assert "edithook edit https://example.com/in.png --prompt 'make it snow'" in logs
    assert callback_token(DEV_CALLBACK_SECRET, uuid.UUID(task["id"])) not in logs
    assert process.returncode == 0


def _dev(tmp_path: Path, **values: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "dev", "--data-dir", str(tmp_path / "pg")],
        env={**env, **values},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_reports_a_bad_port_in_one_line(tmp_path: Path) -> None:
    """A malformed EDITHOOK_PORT stops `edithook dev` with one line naming it."""
    (line,) = refusal(_dev(tmp_path, EDITHOOK_PORT="abc"), "dev")
    assert "EDITHOOK_PORT" in line


def test_dev_reports_a_taken_port_in_one_line(tmp_path: Path) -> None:
    """A port another process listens on stops `edithook dev` with one line, before Postgres."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (line,) = refusal(_dev(tmp_path, EDITHOOK_PORT=str(port)), "dev")
    assert f"EDITHOOK_PORT {port} is already in use" in line
    assert not (tmp_path / "pg").exists()


def test_dev_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    """An EDITHOOK_DATABASE_URL nothing answers stops `edithook dev` with one line, no trace."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/edithook"
    (line,) = refusal(_dev(tmp_path, EDITHOOK_DATABASE_URL=url), "dev")
    assert "cannot reach the database of EDITHOOK_DATABASE_URL" in line
    assert not (tmp_path / "pg").exists()
