"""Uploads are deleted after their retention: the object and the row, and orphaned objects."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.results.storage import StorageError
from app.uploads.retention import prune_uploads
from tests.conftest import Service
from tests.images import encoded


async def _expire(service: Service, upload_id: str) -> None:
    async with service.resources.pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = %s",
            (uuid.UUID(upload_id),),
        )


async def _key(service: Service, upload_id: str) -> str | None:
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT storage_key FROM uploads WHERE id = %s", (uuid.UUID(upload_id),)
        )
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def _exists(service: Service, key: str) -> bool:
    """Whether the object is there; a storage failure other than "missing" fails the test."""
    try:
        async for _ in service.resources.storage.read(key):
            pass
    except StorageError as exc:
        if exc.retryable:
            raise
        return False
    return True


async def test_an_expired_upload_is_deleted_object_and_row(
    api: httpx.AsyncClient, service: Service
) -> None:
    """Past `expires_at`, the retention job deletes the stored object and then the row; an
    upload still within its retention is left alone."""
    kept = await api.post("/v1/uploads", content=encoded(), headers={"Content-Type": "image/png"})
    gone = await api.post("/v1/uploads", content=encoded(), headers={"Content-Type": "image/png"})
    kept_id, gone_id = kept.json()["id"], gone.json()["id"]
    gone_key, kept_key = await _key(service, gone_id), await _key(service, kept_id)
    assert gone_key
    assert kept_key
    assert await _exists(service, gone_key)
    await _expire(service, gone_id)

    resources = service.resources
    pruned = await prune_uploads(resources.sessions, resources.storage, retention_hours=48)

    assert pruned.uploads >= 1
    assert await _key(service, gone_id) is None
    assert not await _exists(service, gone_key)
    assert (await api.get(f"/v1/uploads/{gone_id}")).status_code == 404
    assert await _key(service, kept_id) == kept_key
    assert await _exists(service, kept_key)
    assert (await api.get(f"/v1/uploads/{kept_id}")).status_code == 200


async def test_an_orphaned_object_is_deleted_after_the_retention(service: Service) -> None:
    """An object under uploads/ with no row (its request failed after storing it) goes once
    it is older than the retention and an hour; a young one stays."""
    storage = service.resources.storage
    old_key, young_key = f"uploads/{uuid.uuid4()}.png", f"uploads/{uuid.uuid4()}.png"
    await storage.put(old_key, b"orphan")
    await storage.put(young_key, b"orphan")
    folder = Path(service.settings.storage_url)
    if not (folder / old_key).exists():
        pytest.skip("the session's storage is not a local folder")
    three_days_ago = time.time() - 3 * 86_400
    os.utime(folder / old_key, (three_days_ago, three_days_ago))

    pruned = await prune_uploads(service.resources.sessions, storage, retention_hours=48)

    assert pruned.orphans >= 1
    assert not await _exists(service, old_key)
    assert await _exists(service, young_key)
