"""A description of the machine and software a run measured, for the report."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from bench import database

PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "psycopg")
PG_SETTINGS = ("shared_buffers", "work_mem", "synchronous_commit", "max_connections")


def _proc_field(path: str, name: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def describe_machine(database_url: str) -> dict[str, str]:
    """CPU, cores, memory, OS, Python, Postgres and the versions of the serving stack."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    memory_gib = f"{int(memory.split()[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    settings = database.server_settings(database_url, PG_SETTINGS)
    return {
        "CPU": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": f"{usable} usable ({os.cpu_count()} online)",
        "memory": memory_gib,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Postgres": database.server_version(database_url)
        + " ("
        + ", ".join(f"{name}={value}" for name, value in settings.items())
        + ")",
        "stack": ", ".join(versions),
    }
