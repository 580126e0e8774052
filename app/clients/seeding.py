"""EDITHOOK_API_KEYS into the database, at every start of the API, so that deployments
configured with it run unchanged: its clients and keys become rows like any other."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import psycopg

from app.clients.keys import KEYS_CHANNEL
from app.security import key_digest


async def seed(connection: psycopg.AsyncConnection[Any], keys: Mapping[str, str]) -> None:
    """Store EDITHOOK_API_KEYS' clients and keys (key → client), hashed, if not there yet.

    Idempotent, and the database wins: a key already stored keeps its client and, if an
    operator revoked it, stays revoked; a client already stored keeps its status and limits.
    Runs on a connection of the direct pool (the API's start opens no engine connection).
    """
    if not keys:
        return
    async with connection.transaction(), connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO clients (name) VALUES (%s) ON CONFLICT DO NOTHING",
            [(name,) for name in sorted(set(keys.values()))],
        )
        await cursor.executemany(
            "INSERT INTO api_keys (id, client, hash) VALUES (%s, %s, %s)"
            " ON CONFLICT (hash) DO NOTHING",
            [(uuid.uuid4(), client, key_digest(key)) for key, client in keys.items()],
        )
        await cursor.execute("SELECT pg_notify(%s, '')", (KEYS_CHANNEL,))
