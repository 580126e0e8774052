"""The worker's event loop: uvloop's, as the API's under uvicorn."""

from __future__ import annotations

import asyncio

import uvloop

from app.cli import event_loop_factory


def test_the_worker_runs_on_uvloop_where_it_is_installed() -> None:
    """`edithook worker` starts its loop from this factory; uvloop is a dependency here."""
    factory = event_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        loop.close()
