"""Bad settings and unreachable dependencies stop `serve`, `worker` and `migrate` cleanly.

Each problem is one line on stderr naming the setting and what to do, with a non-zero exit
and no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ALPHA_KEY, CALLBACK_SECRET, REPO, refusal

EDITHOOK = [sys.executable, "-m", "app.cli"]


def _env(**values: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    return {**base, **values}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _closed_database_url() -> str:
    """A database URL on a local port nothing listens on: connections are refused."""
    return f"postgresql://edithook:secret@127.0.0.1:{_free_port()}/edithook"


def _valid_env(database_url: str, tmp_path: Path, **values: str) -> dict[str, str]:
    settings = {
        "EDITHOOK_DATABASE_URL": database_url,
        "EDITHOOK_EVOLINK_API_KEY": "sk-live-0123456789abcdef",
        "EDITHOOK_PUBLIC_BASE_URL": "https://edithook.internal.test",
        "EDITHOOK_CALLBACK_SECRET": CALLBACK_SECRET,
        "EDITHOOK_API_KEYS": f"alpha:{ALPHA_KEY}",
        "EDITHOOK_HOST": "127.0.0.1",
        "EDITHOOK_PORT": str(_free_port()),
        "EDITHOOK_STORAGE_URL": str(tmp_path / "results"),
    }
    return _env(**{**settings, **values})


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDITHOOK, command], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("serve", "EDITHOOK_PORT", "abc"),
        ("serve", "EDITHOOK_PORT", "70000"),
        ("serve", "EDITHOOK_LOG_LEVEL", "loud"),
        ("worker", "EDITHOOK_WORKER_CONCURRENCY", "many"),
        ("serve", "EDITHOOK_STORAGE_URL", "ftp://files.internal.test/results"),
        ("worker", "EDITHOOK_STORAGE_URL", "s3://"),
        ("migrate", "EDITHOOK_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    command: str, name: str, value: str, tmp_path: Path
) -> None:
    """A malformed value is refused in one line that names the setting and what to do."""
    env = _valid_env(_closed_database_url(), tmp_path, **{name: value})
    result = _run(command, env)
    (line,) = refusal(result, command)
    assert result.returncode == 2
    assert name in line
    assert "; " in line  # what is wrong; what to do


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_an_unreachable_database_is_one_line(command: str, tmp_path: Path) -> None:
    """A database server that refuses connections is reported in one line, exit non-zero."""
    result = _run(command, _valid_env(_closed_database_url(), tmp_path))
    (line,) = refusal(result, command)
    assert "EDITHOOK_DATABASE_URL" in line
    assert "Connection refused" in line
    assert "secret" not in line


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line(admin_url: str, occupied_port: int, tmp_path: Path) -> None:
    """serve reports a taken port in one line naming EDITHOOK_PORT, without a traceback."""
    env = _valid_env(admin_url, tmp_path, EDITHOOK_PORT=str(occupied_port))
    result = _run("serve", env)
    (line,) = refusal(result, "serve")
    assert "EDITHOOK_PORT" in line
    assert str(occupied_port) in line


def _example_env() -> dict[str, str]:
    """The assignments of .env.example, as `docker compose` would read them."""
    values = {}
    for raw in (REPO / ".env.example").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_serve_refuses_every_placeholder_of_the_env_example(tmp_path: Path) -> None:
    """An unedited copy of .env.example does not start: each placeholder setting is named."""
    example = _example_env()
    # As docker-compose.yml builds it from POSTGRES_PASSWORD.
    database_url = f"postgresql://edithook:{example['POSTGRES_PASSWORD']}@127.0.0.1:1/edithook"
    env = _env(
        **example,
        EDITHOOK_DATABASE_URL=database_url,
        EDITHOOK_STORAGE_URL=str(tmp_path / "results"),
    )
    result = _run("serve", env)
    lines = refusal(result, "serve")
    assert result.returncode == 2
    named = [name for name in example if name.startswith("EDITHOOK_")]
    assert len(named) >= 4
    for name in [*named, "EDITHOOK_DATABASE_URL"]:
        assert sum(name in line for line in lines) == 1, (name, lines)
    # Placeholders are named, never echoed: they sit beside real secrets in the same file.
    assert example["EDITHOOK_CALLBACK_SECRET"] not in result.stderr
