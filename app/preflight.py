"""What `serve`, `worker` and `migrate` check before they start, each fault as one line.

An operator reads these in a container's log, where every line is its own record: each
problem says which setting is wrong and what to do about it, and the process exits non-zero
without a traceback. Exit 2 means the settings are wrong; exit 1 that something they point
at (the database, the port) cannot be used right now.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import NoReturn
from urllib.parse import urlsplit

import psycopg
from pydantic import SecretStr, ValidationError
from pydantic_core import ErrorDetails

from app.settings import ConfigError, Settings

BAD_SETTINGS = 2
UNAVAILABLE = 1
# Long enough for a database across a slow network, short enough to fail a start promptly.
DATABASE_CONNECT_TIMEOUT_SECONDS = 10


class Refused(Exception):
    """The process must not start; `problems` has one line per fault, `code` the exit code."""

    def __init__(self, problems: list[str], code: int) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.code = code


def refuse(command: str, problems: list[str], code: int = BAD_SETTINGS) -> NoReturn:
    """Print one line per problem to stderr and exit with `code`."""
    for problem in problems:
        print(f"edithook {command} cannot start: {problem}", file=sys.stderr)
    raise SystemExit(code)


def load_settings(**overrides: object) -> Settings:
    """The settings from the environment and `overrides`; Refused names each malformed one."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise Refused([_invalid(error) for error in exc.errors()], BAD_SETTINGS) from None


def _invalid(error: ErrorDetails) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    name = f"EDITHOOK_{field.upper()}"
    reason = error["msg"].replace("Input should", "it should")
    info = Settings.model_fields.get(field)
    if info is None:
        return f"{name} is not valid: {reason}; fix it"
    # Secrets are named, never echoed.
    secret = info.annotation is SecretStr
    value = "" if secret else f" {error['input']!r}"
    default = "" if secret else f" (default {info.default})"
    return f"{name}{value} is not valid: {reason}; fix it or unset it{default}"


def storage_problem(url: str) -> str | None:
    """Why EDITHOOK_STORAGE_URL cannot be used, or None; a folder is created if missing."""
    from obstore.exceptions import BaseError

    from app.results.storage import store_for

    try:
        store_for(url)
    except OSError as exc:
        return (
            f"EDITHOOK_STORAGE_URL: cannot create the folder {exc.filename or url} "
            f"({exc.strerror}); point it at a writable folder"
        )
    except BaseError:
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
        return (
            f"EDITHOOK_STORAGE_URL {shown!r} is not a store edithook can use; set a folder "
            "path or s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
        )
    return None


def database_problem(url: str) -> str | None:
    """Why the database at `url` cannot be reached with one connection, or None."""
    try:
        with psycopg.connect(url, connect_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS):
            return None
    except psycopg.Error as exc:
        # libpq's message names host and port, never the password; its hint follows on
        # indented lines.
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        detail = detail.removeprefix("connection failed: ")
        return (
            f"cannot reach the database of EDITHOOK_DATABASE_URL ({detail}); check the URL "
            "and that Postgres is running and reachable from here"
        )


def check(settings: Settings) -> None:
    """Raise Refused unless the settings are sound and the database answers."""
    try:
        settings.check()
        found: list[str] = []
    except ConfigError as exc:
        found = exc.problems
    storage = storage_problem(settings.storage_url)
    if storage:
        found.append(storage)
    if found:
        raise Refused(found, BAD_SETTINGS)
    database = database_problem(settings.database_url)
    if database:
        raise Refused([database], UNAVAILABLE)


def bind_port(host: str, port: int) -> socket.socket:
    """The API's listening socket on `host:port`; Refused says why it cannot be had."""
    from app.servers import bind

    try:
        return bind(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = (
                f"EDITHOOK_PORT {port} is already in use on {host}; stop what listens there "
                "or set EDITHOOK_PORT to a free port"
            )
        elif exc.errno == errno.EACCES:
            problem = (
                f"EDITHOOK_PORT {port} needs privileges this process lacks; use a port above 1023"
            )
        else:
            problem = (
                f"cannot listen on EDITHOOK_HOST {host!r}, EDITHOOK_PORT {port} "
                f"({exc.strerror or exc}); set EDITHOOK_HOST to an address of this machine, "
                "e.g. 0.0.0.0"
            )
        raise Refused([problem], UNAVAILABLE) from None
