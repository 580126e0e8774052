"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from app.migrate import upgrade
from app.settings import Settings

# The checkout: the tests read its README, compose file, sources and .env.example.
REPO = Path(__file__).resolve().parent.parent

ALPHA_KEY = "alpha-key-0123456789"
BETA_KEY = "beta-key-0123456789"
# An operator's key for the admin API (EDITHOOK_ADMIN_KEYS); no client key.
ADMIN_KEY = "admin-key-0123456789-0123456789-abcdef"
CALLBACK_SECRET = "test-callback-secret-0123456789-abcdef"

# Its image is really fetched: the simulator serves the example domains' paths itself
# (`evolink_simulator.inputs`), here a 1024x768 PNG.
VALID_EDIT: dict[str, Any] = {
    "prompt": "Replace the background with a snowy mountain range",
    "image_urls": ["https://cdn.example.com/in/abc123.png"],
}


async def wait_for_task(
    api: httpx.AsyncClient, task_id: str, statuses: set[str], within: float = 15.0
) -> dict[str, Any]:
    """Poll the task until its status is one of `statuses`; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await api.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} stayed {body.get('status')!r}, wanted {statuses}")


async def create_task(api: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await api.post("/v1/tasks", json={**VALID_EDIT, **overrides})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def events(api: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def own_task_ids(api: httpx.AsyncClient) -> set[str]:
    """The ids of every task of `api`'s client (a test's own client: its tasks alone)."""
    ids: set[str] = set()
    params: dict[str, str | int] = {"limit": 100}
    while True:
        response = await api.get("/v1/tasks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids.update(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            return ids
        params["cursor"] = page["next_cursor"]


async def provider_tasks(sim: httpx.AsyncClient, task_ids: set[str]) -> list[dict[str, Any]]:
    """The simulator's records of the tasks it created for `task_ids`, oldest first: a create's
    callback URL names the task it is for."""
    response = await sim.get("/_sim/tasks")
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()
    return [r for r in records if named_task(r["request"]["callback_url"]) in task_ids]


def named_task(callback_url: str | None) -> str | None:
    """The task id a callback URL (`…/v1/callbacks/evolink/{task_id}/{token}`) names."""
    segments = urlsplit(callback_url or "").path.split("/")
    return segments[-2] if len(segments) >= 2 else None


def with_database(url: str, name: str) -> str:
    """`url` pointed at the database `name` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def migrated_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new database on the server of `admin_url`, migrated to head, dropped on exit."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(
    database_url: str,
    provider_url: str,
    public_url: str,
    *,
    api_keys: str = f"alpha:{ALPHA_KEY},beta:{BETA_KEY}",
    **extra: object,
) -> Settings:
    values: dict[str, object] = {"admin_keys": ADMIN_KEY, "submit_attempts": 4, **extra}
    return Settings(
        environment="development",
        database_url=database_url,
        evolink_base_url=provider_url,
        evolink_api_key="sk-test-key",
        public_base_url=public_url,
        callback_secret=CALLBACK_SECRET,
        api_keys=api_keys,
        **values,  # type: ignore[arg-type]
    )


def refusal(
    result: subprocess.CompletedProcess[str], command: str, *, verb: str = "cannot start"
) -> list[str]:
    """The problem lines of a refused start: a non-zero exit, nothing but one line each."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines, result.stdout
    for line in lines:
        assert line.startswith(f"edithook {command} {verb}: "), result.stderr
    return lines
