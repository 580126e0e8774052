"""Deleting uploads after EDITHOOK_UPLOAD_RETENTION_HOURS: the object, then the row.

The periodic `prune_uploads` job's body (`app.uploads.jobs`). Each batch of due rows is
read in a short transaction, their objects are deleted with no transaction open, then the
rows; a run stopped between the two leaves rows whose objects are already gone, and the
next run deletes them again (deleting a missing object is not an error). A task that names
an upload deleted before it was submitted fails at submission (`app.uploads.inputs`).

It also deletes orphans: objects under `uploads/` older than the retention and an hour,
whose row does not exist (the request that stored one failed before it committed).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.models import Upload
from app.results.storage import ResultStorage, StorageError
from app.uploads.service import UPLOAD_PREFIX

logger = logging.getLogger("edithook.uploads")

PRUNE_BATCH = 500
ORPHAN_GRACE = timedelta(hours=1)


@dataclass
class Pruned:
    uploads: int = 0
    orphans: int = 0


async def prune_uploads(
    sessions: async_sessionmaker[AsyncSession], storage: ResultStorage, *, retention_hours: float
) -> Pruned:
    """Delete every upload past its `expires_at` (object and row), then orphaned objects."""
    pruned = Pruned()
    while True:
        async with transaction(sessions) as session:
            due = (
                await session.execute(
                    select(Upload.id, Upload.storage_key)
                    .where(Upload.expires_at <= datetime.now(UTC))
                    .order_by(Upload.expires_at)
                    .limit(PRUNE_BATCH)
                )
            ).all()
        deleted: list[uuid.UUID] = []
        for upload_id, key in due:
            try:
                await storage.delete(key)
            except StorageError as exc:
                # Kept for the next run: a row without its object would be a broken link.
                logger.warning("could not delete upload %s: %s", upload_id, exc)
                continue
            deleted.append(upload_id)
        if deleted:
            async with transaction(sessions) as session:
                await session.execute(delete(Upload).where(Upload.id.in_(deleted)))
        pruned.uploads += len(deleted)
        if len(due) < PRUNE_BATCH or not deleted:
            break
    pruned.orphans = await _prune_orphans(sessions, storage, retention_hours)
    return pruned


async def _prune_orphans(
    sessions: async_sessionmaker[AsyncSession], storage: ResultStorage, retention_hours: float
) -> int:
    cutoff = datetime.now(UTC) - timedelta(hours=retention_hours) - ORPHAN_GRACE
    try:
        keys = await storage.keys_older_than(UPLOAD_PREFIX, cutoff)
    except StorageError as exc:
        logger.warning("could not look for orphaned uploads: %s", exc)
        return 0
    if not keys:
        return 0
    async with transaction(sessions) as session:
        known = set(
            await session.scalars(select(Upload.storage_key).where(Upload.storage_key.in_(keys)))
        )
    orphans = [key for key in keys if key not in known]
    for key in orphans:
        try:
            await storage.delete(key)
        except StorageError as exc:
            logger.warning("could not delete orphaned upload %s: %s", key, exc)
    return len(orphans)
