"""docker-compose.yml and the Dockerfile as written: what reaches the containers, how they
are published and checked, and how many Postgres connections api + worker may hold.

No Docker engine is needed: the files are read and compose's interpolation is applied here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from app.resources import Resources, open_resources
from app.settings import Settings
from app.worker import open_job_app
from tests.helpers import REPO, make_settings

ROLES = ("api", "worker")
# What obstore reads for S3, GCS and Azure; an operator writes them in .env.
STORAGE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_REGION": "eu-west-1",
    "AWS_ENDPOINT": "https://s3.internal.test",
    "GOOGLE_SERVICE_ACCOUNT": "/run/secrets/gcs.json",
    "AZURE_STORAGE_ACCOUNT_NAME": "edithook",
    "AZURE_STORAGE_ACCOUNT_KEY": "azure-key",
}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} against `env`."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        present = name in env and (env[name] != "" or operator in ("-", "?"))
        if operator in (":?", "?") and not present:
            raise AssertionError(f"compose would refuse: {argument}")
        if operator in (":-", "-") and not present:
            return argument
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def _container_env(service: dict[str, Any], dotenv: dict[str, str]) -> dict[str, str]:
    """The environment compose gives `service` when `.env` holds `dotenv`."""
    env: dict[str, str] = {}
    env_files = service.get("env_file", [])
    for entry in [env_files] if isinstance(env_files, str | dict) else env_files:
        path = entry["path"] if isinstance(entry, dict) else entry
        if path == ".env":
            env.update(dotenv)
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for name, value in environment.items():
        env[name] = _interpolate(str(value), dotenv)
    return env


def _dotenv() -> dict[str, str]:
    """A .env holding a distinct value for every setting and the storage credentials."""
    values = {f"EDITHOOK_{name.upper()}": f"value-of-{name}" for name in Settings.model_fields}
    return {**values, "POSTGRES_PASSWORD": "pg-password", **STORAGE_CREDENTIALS}


@pytest.mark.parametrize("role", ROLES)
def test_every_setting_and_the_storage_credentials_reach_the_container(role: str) -> None:
    """Every EDITHOOK_* setting and the object-store credentials in .env reach api and worker."""
    dotenv = _dotenv()
    env = _container_env(_compose()["services"][role], dotenv)
    # Compose runs its own Postgres and the container listens on all its interfaces.
    assert env["EDITHOOK_DATABASE_URL"] == "postgresql://edithook:pg-password@db:5432/edithook"
    assert env["EDITHOOK_HOST"] == "0.0.0.0"  # noqa: S104
    for name, value in dotenv.items():
        if name not in ("EDITHOOK_DATABASE_URL", "EDITHOOK_HOST", "POSTGRES_PASSWORD"):
            assert env.get(name) == value, name


@pytest.mark.parametrize("role", ROLES)
def test_compose_starts_with_admin_keys_and_no_client_keys(role: str) -> None:
    """Clients and keys can live only in Postgres: a .env with EDITHOOK_ADMIN_KEYS and no
    EDITHOOK_API_KEYS is one compose accepts (the preflight check judges the pair)."""
    dotenv = {k: v for k, v in _dotenv().items() if k != "EDITHOOK_API_KEYS"}
    env = _container_env(_compose()["services"][role], dotenv)
    assert env["EDITHOOK_ADMIN_KEYS"] == dotenv["EDITHOOK_ADMIN_KEYS"]
    assert "EDITHOOK_API_KEYS" not in env


def test_the_api_is_published_on_localhost_by_default() -> None:
    """The API's port is bound to 127.0.0.1 on the host, on EDITHOOK_PORT as in the container."""
    dotenv = {**_dotenv(), "EDITHOOK_PORT": "9100"}
    api = _compose()["services"]["api"]
    (published,) = [_interpolate(str(port), dotenv) for port in api["ports"]]
    assert published == "127.0.0.1:9100:9100"
    assert _container_env(api, dotenv)["EDITHOOK_PORT"] == "9100"
    default = _interpolate(str(api["ports"][0]), {})
    assert default == "127.0.0.1:8000:8000"


def _dockerfile_healthcheck() -> str:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    return line


def test_the_worker_has_a_health_check_of_its_own() -> None:
    """The worker's check reads its heartbeat, not HTTP; the image's default knows both roles."""
    worker = _compose()["services"]["worker"]
    test = worker["healthcheck"]["test"]
    assert test[:1] == ["CMD"]
    assert test[1:] == ["edithook", "healthcheck", "worker"]
    assert "http" not in " ".join(test).lower()
    assert '"edithook", "healthcheck"]' in _dockerfile_healthcheck()
    assert "urlopen" not in _dockerfile_healthcheck()


def _most_connections(resources: Resources) -> int:
    """The most connections these resources may hold at once, read from their pools."""
    engine_pool: Any = resources.engine.pool
    most: int = engine_pool.size() + engine_pool._max_overflow + resources.pool.max_size
    return most


async def test_api_and_worker_fit_well_inside_postgres_default_connections(
    database_url: str, tmp_path: Path
) -> None:
    """With default settings, an API and a worker process may open at most 40 connections."""
    settings = make_settings(
        database_url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:8000",
        storage_url=str(tmp_path),
        db_pool_size=Settings.model_fields["db_pool_size"].default,
    )
    async with (
        open_resources(settings, listen=True) as api,
        open_resources(settings) as worker,
        open_job_app(settings) as jobs,
    ):
        # The API's LISTEN connection for waiting requests; procrastinate's pool and its
        # listener in the worker.
        api_total = _most_connections(api) + 1
        worker_total = _most_connections(worker) + jobs.connector.pool.max_size + 1  # type: ignore[attr-defined]
    assert api_total + worker_total <= 40


async def _connections_to(url: str) -> int:
    """How many connections other than this one the database of `url` has now."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_api_opens_no_procrastinate_pool(
    private_database_url: str, tmp_path: Path
) -> None:
    """An API process holds its direct pool and its LISTEN connection, and no job pool."""
    settings = make_settings(
        private_database_url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:8000",
        storage_url=str(tmp_path),
        db_pool_size=2,
    )
    before = await _connections_to(private_database_url)
    async with open_resources(settings, listen=True) as api:
        opened = await _connections_to(private_database_url) - before
    # The engine connects on first use; the direct pool opens its minimum at once.
    assert opened == api.pool.min_size + 1
