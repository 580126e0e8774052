"""edithook: run the service (dev, serve, worker, migrate, ...) or use it (edit, tasks).

The service's parts are imported by the commands that run them, not here: the client
commands `edit` and `tasks` (`app.cli_client`) are dispatched before anything of the service
is loaded, so that a person's command starts at once (`tests/unit/test_cli_client.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli_client import commands as client_commands

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.settings import Settings

DEV_API_KEYS = "dev:dev-key"
# Development only: a fixed secret keeps callback URLs valid across restarts of `edithook dev`.
DEV_CALLBACK_SECRET = "dev-callback-secret-not-for-production-use"  # noqa: S105


def _production_settings(command: str) -> Settings:
    """The environment's settings, checked; else exit with one line per problem."""
    from app import preflight
    from app.preflight import Refused, load_settings, refuse

    try:
        settings = load_settings()
        preflight.check(settings)
    except Refused as exc:
        refuse(command, exc.problems, exc.code)
    return settings


def serve() -> int:
    """The production API process."""
    from app import preflight
    from app.logs import UVICORN_LOG_CONFIG, configure_logging
    from app.preflight import Refused, refuse

    settings = _production_settings("serve")
    try:
        # Bound here, before the app starts, so that a taken port is one clear line.
        sock = preflight.bind_port(settings.host, settings.port)
    except Refused as exc:
        refuse("serve", exc.problems, exc.code)
    import uvicorn

    from app.main import create_app

    configure_logging(settings.log_level, settings.log_format or "json")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            log_config=UVICORN_LOG_CONFIG,
            proxy_headers=True,
            server_header=False,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    return 0 if server.started else preflight.UNAVAILABLE


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (everywhere but Windows), as `serve` runs
    under uvicorn; else None, asyncio's own. The worker spends a tenth of its time in the
    loop itself (waking up for each job, each statement, each HTTP exchange)."""
    try:
        import uvloop
    except ImportError:  # a platform without uvloop
        return None
    return uvloop.new_event_loop


def worker() -> int:
    """The production worker process."""
    from app.logs import configure_logging

    settings = _production_settings("worker")
    configure_logging(settings.log_level, settings.log_format or "json")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_run_worker(settings))
    return 0


async def _run_worker(settings: Settings) -> None:
    from app.heartbeat import heartbeat_path
    from app.resources import open_resources
    from app.worker import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_resources(settings) as resources:
        await run_worker(resources, stop, heartbeat=heartbeat_path())


def _database_settings(command: str) -> Settings:
    """The environment's settings for a command that needs only the database, which answers;
    else exit with one line."""
    from app import preflight
    from app.preflight import Refused, load_settings, refuse

    try:
        settings = load_settings()
        if not settings.database_url:
            raise Refused(
                ["EDITHOOK_DATABASE_URL is not set; set it to postgresql://user:pass@host/db"],
                preflight.BAD_SETTINGS,
            )
        problem = preflight.database_problem(settings.database_url)
        if problem:
            raise Refused([problem], preflight.UNAVAILABLE)
    except Refused as exc:
        refuse(command, exc.problems, exc.code)
    return settings


def migrate() -> int:
    """Apply every pending migration."""
    from app.logs import configure_logging

    settings = _database_settings("migrate")
    configure_logging(settings.log_level, settings.log_format or "text")
    from app.migrate import upgrade

    upgrade(settings.database_url)
    return 0


def admin(command: str, args: argparse.Namespace) -> int:
    """`edithook clients …` and `edithook keys …`, straight on the database."""
    settings = _database_settings(command)
    from app.clients.commands import run

    return run(command, args, settings.database_url)


def _simulator_factory(command: str) -> Callable[[], FastAPI]:
    """`create_simulator_app`, imported only here: the production image does not have it."""
    try:
        from evolink_simulator import create_simulator_app
    except ImportError:
        raise SystemExit(
            f"edithook {command} needs the EvoLink simulator, which this installation lacks: "
            "install edithook from a checkout with the dev extra (pip install -e '.[dev]')."
        ) from None
    return create_simulator_app


def simulator(port: int) -> int:
    """Run the EvoLink simulator alone (for trying the client, or a `serve` in development)."""
    create_simulator_app = _simulator_factory("simulator")
    import uvicorn

    from app.logs import UVICORN_LOG_CONFIG, configure_logging

    configure_logging("info")
    uvicorn.run(create_simulator_app(), host="127.0.0.1", port=port, log_config=UVICORN_LOG_CONFIG)
    return 0


def _embedded_database(data_dir: Path) -> str:
    try:
        import pgserver
    except ImportError:
        raise SystemExit(
            "edithook dev needs the dev extra for its embedded Postgres "
            "(pip install -e '.[dev]'), or set EDITHOOK_DATABASE_URL."
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    # "stop": the embedded server stops when `edithook dev` exits.
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    if "edithook" not in server.psql("SELECT datname FROM pg_database;"):
        server.psql("CREATE DATABASE edithook;")
    return f"postgresql://postgres@/edithook?host={data_dir.resolve()}"


async def _run_dev(data_dir: Path, port: int) -> None:
    create_simulator_app = _simulator_factory("dev")
    from app import preflight
    from app.main import create_app
    from app.migrate import upgrade_async
    from app.preflight import Refused, load_settings, refuse
    from app.resources import open_resources
    from app.servers import socket_url, start_server
    from app.worker import run_worker

    env = os.environ
    try:
        # Before Postgres starts, so that a taken port costs nothing.
        api_socket = preflight.bind_port(env.get("EDITHOOK_HOST", "127.0.0.1"), port)
    except Refused as exc:
        refuse("dev", exc.problems, exc.code)
    database_url = env.get("EDITHOOK_DATABASE_URL")
    if database_url:
        problem = preflight.database_problem(database_url)
        if problem:
            refuse("dev", [problem], preflight.UNAVAILABLE)
    else:
        database_url = _embedded_database(data_dir)
    await upgrade_async(database_url)

    simulator_server = await start_server(create_simulator_app(), "127.0.0.1", 0)
    try:
        settings = load_settings(
            environment="development",
            database_url=database_url,
            evolink_base_url=env.get("EDITHOOK_EVOLINK_BASE_URL", simulator_server.url),
            evolink_api_key=env.get("EDITHOOK_EVOLINK_API_KEY", "sk-simulator"),
            public_base_url=env.get("EDITHOOK_PUBLIC_BASE_URL", socket_url(api_socket)),
            callback_secret=env.get("EDITHOOK_CALLBACK_SECRET", DEV_CALLBACK_SECRET),
            api_keys=env.get("EDITHOOK_API_KEYS", DEV_API_KEYS),
            storage_url=env.get("EDITHOOK_STORAGE_URL", str(data_dir.parent / "results")),
            # Short enough to see reconciliation work in a demo.
            poll_floor_seconds=float(env.get("EDITHOOK_POLL_FLOOR_SECONDS", "5")),
        )
    except Refused as exc:
        refuse("dev", exc.problems, exc.code)
    problems = [p for p in settings.problems() if "API_KEYS has keys shorter" not in p]
    if problems:
        refuse("dev", problems)
    api_server = await start_server(create_app(settings), sock=api_socket, log_level="info")
    async with open_resources(settings) as resources:
        worker = asyncio.create_task(run_worker(resources))
        _print_banner(settings, api_server.url, database_url, data_dir)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await asyncio.wait(
                [asyncio.create_task(stop.wait()), worker], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await api_server.stop()
            await simulator_server.stop()


def _print_banner(settings: Settings, api_url: str, database_url: str, data_dir: Path) -> None:
    key, client = next(iter(settings.client_keys.items()))
    where = (
        f"embedded Postgres in {data_dir}" if "host=/" in database_url else "EDITHOOK_DATABASE_URL"
    )
    print(
        f"\nedithook dev is running (API, worker and the EvoLink simulator in one process)\n"
        f"  API        {api_url}   (docs: {api_url}/docs)\n"
        f"  provider   {settings.evolink_base_url}   (the EvoLink simulator)\n"
        f"  database   {where}\n"
        f"  results    {settings.storage_url}\n"
        f"  client key {client}: Authorization: Bearer {key}\n"
        f"Try:\n"
        f"  curl -s -X POST {api_url}/v1/tasks -H 'Authorization: Bearer {key}' \\\n"
        f"    -H 'Content-Type: application/json' -H 'Prefer: wait=10' \\\n"
        f'    -d \'{{"prompt": "make it snow", "image_urls": ["https://example.com/in.png"]}}\'\n'
        f"Or from a terminal (a local file or a URL; the results are saved here):\n"
        f"  EDITHOOK_URL={api_url} EDITHOOK_KEY={key} \\\n"
        f"    edithook edit https://example.com/in.png --prompt 'make it snow'\n"
        f"Be told by signed webhooks (development lets them reach a receiver on loopback):\n"
        f"  curl -s -X POST {api_url}/v1/webhook-endpoints -H 'Authorization: Bearer {key}' \\\n"
        f"    -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"url": "http://127.0.0.1:9000/edithook"}}\'   (its secret is shown once)\n',
        flush=True,
    )


def dev(data_dir: Path) -> int:
    """Everything on one machine with no set-up: embedded Postgres, the simulator, the API."""
    from app.logs import configure_logging
    from app.preflight import Refused, load_settings, refuse

    try:
        # The environment's values must at least be well-formed; the rest has defaults here.
        probe = load_settings(environment="development")
    except Refused as exc:
        refuse("dev", exc.problems, exc.code)
    configure_logging(probe.log_level, probe.log_format or "text")
    asyncio.run(_run_dev(data_dir, probe.port))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if client_commands.wants(argv):
        return client_commands.main(argv)
    parser = argparse.ArgumentParser(prog="edithook", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dev_parser = commands.add_parser("dev", help="run everything locally with embedded defaults")
    dev_parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EDITHOOK_DEV_DATA_DIR", "var/pgdata")),
        help="where the embedded Postgres keeps its data (default: var/pgdata)",
    )
    commands.add_parser("serve", help="run the API (production)")
    commands.add_parser("worker", help="run the background worker (production)")
    commands.add_parser("migrate", help="apply database migrations")
    health_parser = commands.add_parser(
        "healthcheck", help="exit 0 if this container's API or worker is healthy"
    )
    health_parser.add_argument(
        "role",
        nargs="?",
        choices=["api", "worker"],
        help="default: worker if a worker heartbeat exists here, else api",
    )
    sim_parser = commands.add_parser("simulator", help="run the EvoLink simulator alone")
    sim_parser.add_argument("--port", type=int, default=8100)
    from app.clients.commands import add_parsers

    add_parsers(commands)
    client_commands.add_parsers(commands)
    args = parser.parse_args(argv)
    match args.command:
        case "dev":
            return dev(args.data_dir)
        case "serve":
            return serve()
        case "worker":
            return worker()
        case "migrate":
            return migrate()
        case "healthcheck":
            from app.health import healthcheck

            return healthcheck(args.role)
        case "simulator":
            return simulator(args.port)
        case "clients" | "keys":
            return admin(args.command, args)
        case "edit" | "tasks":  # reached only through the full parser (`wants` takes them)
            return client_commands.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
