"""Input images: fetched as EvoLink fetches them, and the sample images the simulator serves.

EvoLink downloads every `image_urls` entry itself before it edits, and fails the task
(`image_processing_error`) when one cannot be fetched or decoded, or (`invalid_parameters`)
when its sides are outside 384 to 3072 px. The simulator does the same over real HTTP: a GET
(redirects followed, a timeout per image), a 2xx, a size limit, then the bytes decoded.

Hosts of the reserved documentation domains (`example.com`, `example.org`, `example.net`,
`*.example` and their subdomains, RFC 2606) can never serve anything real, so the simulator
stands in for them: `https://cdn.example.com/in/photo.png` is fetched from the simulator's
own `/inputs/in/photo.png`, which serves a generated image of the type the name's extension
says (a `WIDTHxHEIGHT` in the name sets its size; a name with `missing` in it is a 404). So
the README's example URL works with `edithook dev`, tests name inputs that are really
fetched, and any other URL (an edithook upload link, a real web image) is fetched as it is.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image, UnidentifiedImageError

MIN_INPUT_SIDE, MAX_INPUT_SIDE = 384, 3072
SAMPLE_SIZE = (1024, 768)
SAMPLE_DOMAINS = ("example.com", "example.org", "example.net", "example")
_SAMPLE_FORMATS = {"png": ("PNG", "image/png"), "jpg": ("JPEG", "image/jpeg"),
                   "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}  # fmt: skip
_SIZE_IN_NAME = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_MAX_REDIRECTS = 3


@dataclass
class InputFetch:
    """One input image as the simulator fetched it: what it asked, and what came of it.
    `code` is the task-level error code EvoLink fails the task with over it, if any."""

    url: str
    fetched_url: str
    status_code: int | None = None
    size_bytes: int | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    code: str | None = None
    error: str | None = None
    at: float = 0.0


class InputFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_sample_host(host: str | None) -> bool:
    host = (host or "").lower().rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in SAMPLE_DOMAINS)


def fetch_target(url: str, own_base_url: str) -> str:
    """Where the simulator GETs `url`: its own `/inputs/...` for a sample host, else `url`."""
    parts = urlsplit(url)
    if not is_sample_host(parts.hostname):
        return url
    base = urlsplit(own_base_url.rstrip("/"))
    return urlunsplit((base.scheme, base.netloc, "/inputs" + (parts.path or "/"), "", ""))


def sample_image(name: str) -> tuple[bytes, str] | None:
    """The sample image for a requested name, and its content type; None: no such image.
    Only the name's extension and size matter, so a run naming thousands of paths (the
    schemathesis run) makes a handful of images, not one per path."""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension not in _SAMPLE_FORMATS or "missing" in name.lower():
        return None
    size = SAMPLE_SIZE
    found = _SIZE_IN_NAME.search(name.rsplit("/", 1)[-1])
    if found:
        size = (max(1, min(int(found[1]), 8000)), max(1, min(int(found[2]), 8000)))
    return _generated(extension, size)


@lru_cache(maxsize=64)
def _generated(extension: str, size: tuple[int, int]) -> tuple[bytes, str]:
    pillow, content_type = _SAMPLE_FORMATS[extension]
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 60)).save(buffer, format=pillow)
    return buffer.getvalue(), content_type


def _decode(data: bytes) -> tuple[int, int]:
    """The image's size; decoded whole only when the size is one EvoLink takes."""
    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP", "BMP", "TIFF"]) as image:
        width, height = image.size
        if _within(width, height):
            image.load()
    return width, height


def _within(width: int, height: int) -> bool:
    return MIN_INPUT_SIDE <= width <= MAX_INPUT_SIDE and MIN_INPUT_SIDE <= height <= MAX_INPUT_SIDE


async def fetch_input(
    http: httpx.AsyncClient,
    url: str,
    own_base_url: str,
    *,
    seconds: float,
    max_bytes: int,
) -> InputFetch:
    """GET one input image and check it as EvoLink would; the record says how it went."""
    target = fetch_target(url, own_base_url)
    record = InputFetch(url=url, fetched_url=target, at=time.time())
    try:
        await _fetch_into(record, http, target, seconds=seconds, max_bytes=max_bytes)
    except InputFailure as failure:
        record.code, record.error = failure.code, failure.message
    return record


async def _fetch_into(
    record: InputFetch, http: httpx.AsyncClient, target: str, *, seconds: float, max_bytes: int
) -> None:
    try:
        async with asyncio.timeout(seconds):
            data = await _get(record, http, target, seconds, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise InputFailure("image_processing_error", "timed out fetching the image") from None
    except httpx.HTTPError as exc:
        raise InputFailure(
            "image_processing_error", f"could not fetch the image ({type(exc).__name__})"
        ) from None
    record.size_bytes = len(data)
    try:
        width, height = await asyncio.to_thread(_decode, data)
    except (
        OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError,
        Image.DecompressionBombError, Image.DecompressionBombWarning,
    ):  # fmt: skip
        raise InputFailure("image_processing_error", "the image could not be decoded") from None
    record.width, record.height = width, height
    if not _within(width, height):
        raise InputFailure(
            "invalid_parameters",
            f"image dimensions {width}x{height} are outside {MIN_INPUT_SIDE}-{MAX_INPUT_SIDE} px",
        )


async def _get(
    record: InputFetch, http: httpx.AsyncClient, url: str, seconds: float, max_bytes: int
) -> bytes:
    """The body of a 2xx GET of `url` (redirects followed), read up to `max_bytes`."""
    for _ in range(_MAX_REDIRECTS + 1):
        async with http.stream("GET", url, timeout=seconds) as response:
            record.status_code = response.status_code
            record.content_type = response.headers.get("content-type")
            if response.is_redirect and "location" in response.headers:
                url = str(response.url.join(response.headers["location"]))
                continue
            if not 200 <= response.status_code < 300:
                raise InputFailure(
                    "image_processing_error",
                    f"fetching the image answered HTTP {response.status_code}",
                )
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise InputFailure(
                        "invalid_parameters", f"the image is larger than {max_bytes} bytes"
                    )
            return bytes(data)
    raise InputFailure("image_processing_error", "too many redirects fetching the image")
