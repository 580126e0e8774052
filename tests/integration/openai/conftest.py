"""OpenAI's own SDK pointed at the service, input images, and a replica with short limits."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator

import openai
import pytest
from PIL import Image

from app.main import create_app
from app.servers import RunningServer, bind, socket_url, start_server
from tests.conftest import Caller, Service
from tests.helpers import make_settings

# The replica's limits: a wait that runs out at once, and small uploads.
SHORT_WAIT_SECONDS = 1
SMALL_UPLOAD_BYTES = 200_000


def png(width: int = 512, height: int = 512, colour: tuple[int, int, int] = (40, 90, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int = 640, height: int = 480) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about 3·side² bytes."""
    pixels = os.urandom(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def sdk(url: str, key: str, *, max_retries: int = 0) -> openai.AsyncOpenAI:
    """OpenAI's client as a caller configures it for edithook: the base URL and a key."""
    return openai.AsyncOpenAI(
        api_key=key, base_url=f"{url}/v1", max_retries=max_retries, timeout=60
    )


@pytest.fixture
async def client(service: Service, caller: Caller) -> AsyncIterator[openai.AsyncOpenAI]:
    """OpenAI's SDK for the test's own client; no retries unless a test asks for them."""
    async with sdk(service.url, caller.key) as opened:
        yield opened


@pytest.fixture(scope="module")
async def short_replica(service: Service, simulator: RunningServer) -> AsyncIterator[RunningServer]:
    """A second API on the suite's database and storage (the suite's worker runs its tasks)
    that waits only `SHORT_WAIT_SECONDS` and takes uploads of `SMALL_UPLOAD_BYTES`."""
    sock = bind()
    settings = make_settings(
        service.settings.database_url,
        simulator.url,
        socket_url(sock),
        api_keys=service.settings.api_keys.get_secret_value(),
        storage_url=service.settings.storage_url,
        db_pool_size=1,
        openai_wait_seconds=SHORT_WAIT_SECONDS,
        upload_max_bytes=SMALL_UPLOAD_BYTES,
    )
    running = await start_server(create_app(settings), sock=sock)
    yield running
    await running.stop()
