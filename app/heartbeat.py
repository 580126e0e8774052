"""The worker's heartbeat file: where it is, how often it is touched, when it is stale.

Apart from app.worker so that `edithook healthcheck`, run every few seconds, reads it
without importing the worker and every job.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

logger = logging.getLogger("edithook.worker")

# The heartbeat is touched after every this many seconds of the job worker running; a
# heartbeat older than HEARTBEAT_STALE_SECONDS means the worker is not working (`edithook
# healthcheck`). Stale spans the longest restart delay (app.worker) and a few missed beats.
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_STALE_SECONDS = 60.0


def heartbeat_path() -> Path:
    """Where `edithook worker` keeps its heartbeat: the temporary folder (TMPDIR)."""
    return Path(tempfile.gettempdir()) / "edithook-worker.heartbeat"


async def beat(path: Path) -> None:
    """Touch `path` every HEARTBEAT_SECONDS, starting one interval in.

    Waiting first means a worker that procrastinate stops at once (the database is gone) and
    that is restarted again and again never looks alive.
    """
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        try:
            # A file in the temporary folder: nothing worth a thread.
            path.touch()  # noqa: ASYNC240
        except OSError as exc:
            logger.error("cannot write the heartbeat %s: %s", path, exc)
