"""`edithook healthcheck`: the API answers /healthz; a worker keeps its heartbeat fresh."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.helpers import ALPHA_KEY, CALLBACK_SECRET, refusal

EDITHOOK = [sys.executable, "-m", "app.cli"]
HEARTBEAT = "edithook-worker.heartbeat"


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    # The heartbeat lives in the temporary folder; each test has its own.
    return {**base, "TMPDIR": str(tmp_path), **values}


def _healthcheck(env: dict[str, str], *role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDITHOOK, "healthcheck", *role], env=env, capture_output=True, text=True, timeout=60
    )


async def _healthcheck_async(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`_healthcheck` that lets this event loop (which serves the API) run meanwhile."""
    process = await asyncio.create_subprocess_exec(
        *EDITHOOK, "healthcheck", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess([], process.returncode, stdout.decode(), stderr.decode())


async def test_the_api_check_asks_healthz(service_url: str, tmp_path: Path) -> None:
    """The API's check passes while /healthz answers and fails in one line when nothing does."""
    port = str(urlsplit(service_url).port)
    env = _env(tmp_path, EDITHOOK_HOST="127.0.0.1", EDITHOOK_PORT=port)
    healthy = await _healthcheck_async(env)
    assert healthy.returncode == 0, healthy.stderr
    nobody = _healthcheck(_env(tmp_path, EDITHOOK_PORT="9"), "api")
    (line,) = refusal(nobody, "healthcheck", verb="is unhealthy")
    assert "/healthz" in line


async def test_a_running_worker_is_healthy_until_it_stops(
    private_database_url: str, tmp_path: Path
) -> None:
    """A live worker writes its heartbeat; once it has stopped, the check fails."""
    env = _env(
        tmp_path,
        EDITHOOK_ENVIRONMENT="development",
        EDITHOOK_DATABASE_URL=private_database_url,
        EDITHOOK_EVOLINK_BASE_URL="http://127.0.0.1:9",
        EDITHOOK_EVOLINK_API_KEY="sk-test-key",
        EDITHOOK_PUBLIC_BASE_URL="http://127.0.0.1:9",
        EDITHOOK_CALLBACK_SECRET=CALLBACK_SECRET,
        EDITHOOK_API_KEYS=f"alpha:{ALPHA_KEY}",
        EDITHOOK_STORAGE_URL=str(tmp_path / "results"),
    )
    worker = await asyncio.create_subprocess_exec(
        *EDITHOOK, "worker", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / HEARTBEAT).exists():
            assert worker.returncode is None, "the worker exited"
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.2)
        healthy = _healthcheck(env, "worker")
        assert healthy.returncode == 0, healthy.stderr
        # Without a role, the heartbeat tells the check it runs beside a worker.
        assert _healthcheck(env).returncode == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 60)
    stopped = _healthcheck(env, "worker")
    (line,) = refusal(stopped, "healthcheck", verb="is unhealthy")
    assert "heartbeat" in line


def test_a_stale_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    """A heartbeat not renewed for a long time fails the worker's check in one line."""
    heartbeat = tmp_path / HEARTBEAT
    heartbeat.touch()
    an_hour_ago = time.time() - 3600
    os.utime(heartbeat, (an_hour_ago, an_hour_ago))
    result = _healthcheck(_env(tmp_path), "worker")
    (line,) = refusal(result, "healthcheck", verb="is unhealthy")
    assert "heartbeat" in line
    age = re.search(r"is (\d+) s old", line)
    assert age is not None, line
    assert int(age[1]) >= 3600
