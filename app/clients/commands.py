"""`edithook clients …` and `edithook keys …`: the admin API's operations on the database.

They need only EDITHOOK_DATABASE_URL, run the admin API's own service functions in one
transaction, and print what the API would answer, as JSON on stdout. A refusal (no such
client, a name taken, an invalid limit) is printed as the API's problem document on stderr,
with exit code 1. The API replicas hear every change by NOTIFY, as for the admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.clients import service
from app.clients.schemas import (
    ClientCreate,
    ClientUpdate,
    KeyCreated,
    client_list,
    client_read,
    key_list,
    key_read,
)
from app.db import create_engine, create_sessionmaker, transaction
from app.errors import PROBLEM_BASE, ProblemError, Unprocessable, validation_errors
from app.vocabulary import BudgetPeriod, ClientStatus

LIMITS = ("budget_images", "budget_period", "budget_soft_ratio", "requests_per_minute",
          "max_in_flight")  # fmt: skip
REFUSED = 1
# What an option of `clients update` says to remove a limit.
CLEAR = "none"


def add_parsers(commands: Any) -> None:
    """Add `clients` and `keys` with their subcommands to the CLI's subparsers."""
    clients = commands.add_parser("clients", help="make, list, show and change clients")
    actions = clients.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a client")
    create.add_argument("name")
    _limit_options(create, clearable=False)
    actions.add_parser("list", help="list every client")
    show = actions.add_parser("show", help="show one client")
    show.add_argument("name")
    update = actions.add_parser("update", help="change a client's status or limits")
    update.add_argument("name")
    update.add_argument("--status", choices=[s.value for s in ClientStatus])
    _limit_options(update, clearable=True)

    keys = commands.add_parser("keys", help="make, list and revoke a client's API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    for action, text in (("create", "make a key (shown only now)"), ("list", "list the keys")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("client")
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("client")
    revoke.add_argument("key_id")


def _limit_options(parser: argparse.ArgumentParser, *, clearable: bool) -> None:
    clear = " ('none' removes it)" if clearable else ""
    parser.add_argument("--budget-images", type=_number, help="images per period" + clear)
    parser.add_argument(
        "--budget-period", choices=[p.value for p in BudgetPeriod] + ([CLEAR] if clearable else [])
    )
    parser.add_argument("--budget-soft-ratio", type=_number, help="0 < ratio <= 1" + clear)
    parser.add_argument("--requests-per-minute", type=_number, help="at least 1" + clear)
    parser.add_argument("--max-in-flight", type=_number, help="at least 1" + clear)


def _number(value: str) -> int | float | str:
    """An option's value as a number, CLEAR for 'none', else as given (refused by the schema)."""
    if value.lower() == CLEAR:
        return CLEAR
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def run(command: str, args: argparse.Namespace, database_url: str) -> int:
    """Run `edithook <command> <action>`; print its answer or its problem; the exit code."""
    try:
        operation = _operation(command, args)
    except ValidationError as exc:
        errors = validation_errors(list(exc.errors()))
        return _refused(Unprocessable(f"{len(errors)} problem(s) found; see `errors`.",
                                      errors=errors))  # fmt: skip
    try:
        answer = asyncio.run(_in_transaction(database_url, operation))
    except ProblemError as exc:
        return _refused(exc)
    print(answer.model_dump_json(indent=2))
    return 0


Operation = Callable[[AsyncSession], Awaitable[BaseModel]]


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given as options; one given as 'none' is there as None (it is removed)."""
    values = {f: getattr(args, f) for f in LIMITS if getattr(args, f, None) is not None}
    return {f: None if v == CLEAR else v for f, v in values.items()}


def _operation(command: str, args: argparse.Namespace) -> Operation:
    match command, args.action:
        case "clients", "create":
            body = ClientCreate.model_validate({"name": args.name, **_given(args)})

            async def create(session: AsyncSession) -> BaseModel:
                return client_read(await service.create_client(session, body))

            return create
        case "clients", "list":

            async def listing(session: AsyncSession) -> BaseModel:
                return client_list(await service.list_clients(session))

            return listing
        case "clients", "show":

            async def show(session: AsyncSession) -> BaseModel:
                return client_read(await service.get_client(session, args.name))

            return show
        case "clients", "update":
            fields = _given(args)
            if args.status is not None:
                fields["status"] = args.status
            update = ClientUpdate.model_validate(fields)

            async def change(session: AsyncSession) -> BaseModel:
                return client_read(await service.update_client(session, args.name, update))

            return change
        case "keys", "create":

            async def make_key(session: AsyncSession) -> BaseModel:
                row, key = await service.create_key(session, args.client)
                return KeyCreated(id=row.id, key=key, created_at=row.created_at)

            return make_key
        case "keys", "list":

            async def list_keys(session: AsyncSession) -> BaseModel:
                return key_list(await service.list_keys(session, args.client))

            return list_keys
        case "keys", "revoke":
            key_id = args.key_id

            async def revoke(session: AsyncSession) -> BaseModel:
                row = await service.revoke_key(session, args.client, service.parse_key_id(key_id))
                return key_read(row)

            return revoke
    raise ValueError(f"unknown command {command} {args.action}")


async def _in_transaction(database_url: str, operation: Operation) -> BaseModel:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await operation(session)
    finally:
        await engine.dispose()


def _refused(exc: ProblemError) -> int:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + exc.slug,
        "title": exc.title,
        "status": exc.status,
    }
    if exc.detail:
        body["detail"] = exc.detail
    body.update(exc.extra)
    print(json.dumps(body, indent=2), file=sys.stderr)
    return REFUSED
