"""Download one result image, safely: bounded, validated, and only from public addresses.

The URLs come from the provider, but a result URL is still a URL someone else chose, so it
is treated like user input. Before each request (and each redirect hop) the URL goes
through `app.urls.check_url`, the rule `image_urls` are held to: the host is normalised as
a resolver reads it (IDNA, inet_aton spellings, a trailing dot) and judged. An address
literal is then connected to as judged; a name is resolved and every address it resolves to
must pass `address_allowed`. The request goes to one of those checked addresses, with the
normalised name kept for `Host` and TLS, so a second DNS answer cannot point the connection
somewhere else. Redirects are followed by
hand (at most `MAX_REDIRECTS`), the body is read up to `max_bytes`, and the bytes must
decode as a PNG, JPEG or WebP image (what the provider produces) of a sane pixel count.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass
from typing import Final

import httpx
from PIL import Image, UnidentifiedImageError

from app.urls import (
    IPAddress,
    Unresolved,
    UrlRefused,
    WebUrl,
    address_allowed,
    check_url,
    is_loopback_address,
    pinned,
    resolve,
)

MAX_REDIRECTS: Final = 3
# The provider's outputs are at most 2048x2048; this leaves ample room while keeping a
# decoded image (4 bytes a pixel) near 100 MB at worst.
MAX_PIXELS: Final = 25_000_000
# A peer that trickles bytes just fast enough to dodge the read timeout is stopped here.
DEFAULT_TOTAL_TIMEOUT: Final = 120.0
# At most this many of a host's addresses are tried when connecting fails.
MAX_ADDRESSES_TRIED: Final = 4

# Pillow's format name → (content type, file extension). MPO is a JPEG with extra frames.
FORMATS: Final[dict[str, tuple[str, str]]] = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "MPO": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}
_OPENERS: Final = ("PNG", "JPEG", "WEBP")

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# 403/404/410 are retryable: a CDN may not have the file yet; the caller stops at expiry.
_RETRYABLE_STATUSES: Final = frozenset({403, 404, 408, 410, 425, 429})


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded image; `content_type` and `extension` come from its decoded format."""

    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str


class FetchError(Exception):
    """The image could not be fetched; `retryable` says whether trying later may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable

    def __repr__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"FetchError({kind}: {self.reason})"


def _permanent(reason: str) -> FetchError:
    return FetchError(reason, retryable=False)


def _retryable(reason: str) -> FetchError:
    return FetchError(reason, retryable=True)


async def _checked_addresses(
    url: httpx.URL, *, allow_loopback: bool
) -> tuple[WebUrl, list[IPAddress]]:
    """`url` checked, and the addresses it may be fetched from; FetchError (permanent) if none."""
    try:
        target = check_url(str(url), schemes=("https", "http"), allow_loopback=allow_loopback)
    except UrlRefused as exc:
        raise _permanent(f"the URL is refused: it {exc}") from None
    if target.address is not None:
        addresses = [target.address]
    else:
        try:
            addresses = await resolve(target.host, target.port)
        except Unresolved as exc:
            # Usually a transient resolver problem; a name that never resolves ends at expiry.
            raise _retryable(str(exc)) from exc
        refused = [a for a in addresses if not address_allowed(a, allow_loopback=allow_loopback)]
        if refused:
            raise _permanent(f"{target.host} resolves to a non-public address ({refused[0]})")
    # Plain http only to the local simulator: every address must be loopback.
    if target.scheme == "http" and not (
        allow_loopback and all(is_loopback_address(a) for a in addresses)
    ):
        raise _permanent("plain http is only allowed to loopback hosts")
    return target, addresses


async def fetch_image(
    http: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    allow_loopback: bool = False,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
) -> FetchedImage:
    """Download and decode the image at `url`.

    Only https URLs without credentials, whose host resolves only to public addresses, are
    fetched; with `allow_loopback` (for a provider that is itself on loopback) loopback
    addresses are allowed too, over http or https. Redirects are followed by hand, at most
    `MAX_REDIRECTS`, each target checked like the first. Raises FetchError: transport
    errors, timeouts, 5xx, 403, 404, 408, 410 and 429 are retryable; other statuses, a
    refused address, a body over `max_bytes` and anything that is not a PNG, JPEG or WebP
    image are permanent.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _permanent(f"the URL is not valid: {exc}") from exc
    try:
        async with asyncio.timeout(total_timeout):
            data = await _download(http, parsed, max_bytes=max_bytes, allow_loopback=allow_loopback)
    except TimeoutError as exc:
        raise _retryable(f"the download took longer than {total_timeout:g} s") from exc
    content_type, extension, width, height = await asyncio.to_thread(_decode, data)
    return FetchedImage(
        data=data,
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


async def _download(
    http: httpx.AsyncClient, url: httpx.URL, *, max_bytes: int, allow_loopback: bool
) -> bytes:
    for _hop in range(MAX_REDIRECTS + 1):
        target, addresses = await _checked_addresses(url, allow_loopback=allow_loopback)
        outcome = await _get_any(http, url, target, addresses, max_bytes=max_bytes)
        if isinstance(outcome, bytes):
            return outcome
        url = outcome
    raise _permanent(f"more than {MAX_REDIRECTS} redirects")


async def _get_any(
    http: httpx.AsyncClient,
    url: httpx.URL,
    target: WebUrl,
    addresses: list[IPAddress],
    *,
    max_bytes: int,
) -> bytes | httpx.URL:
    """GET `url` from the first of `addresses` that accepts a connection."""
    last: FetchError | None = None
    for address in addresses[:MAX_ADDRESSES_TRIED]:
        try:
            return await _get_once(http, url, target, address, max_bytes=max_bytes)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            last = _retryable(f"could not connect to {url.host} ({address}): {_describe(exc)}")
        except httpx.UnsupportedProtocol as exc:
            raise _permanent(f"unsupported protocol: {exc}") from exc
        except httpx.DecodingError as exc:
            raise _permanent(f"the response body could not be decoded: {exc}") from exc
        except httpx.TransportError as exc:
            raise _retryable(f"the download from {url.host} failed: {_describe(exc)}") from exc
    assert last is not None  # addresses is never empty
    raise last


async def _get_once(
    http: httpx.AsyncClient, url: httpx.URL, target: WebUrl, address: IPAddress, *, max_bytes: int
) -> bytes | httpx.URL:
    """The body of a 2xx answer, or the next URL of a redirect; FetchError otherwise."""
    aimed, headers, extensions = pinned(url, target, address)
    headers["Accept"] = "image/png, image/jpeg, image/webp, */*;q=0.1"
    async with http.stream(
        "GET", aimed, headers=headers, extensions=extensions, follow_redirects=False
    ) as response:
        status = response.status_code
        if status in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise _permanent(f"HTTP {status} redirect without a Location")
            try:
                return url.join(location)
            except httpx.InvalidURL as exc:
                raise _permanent(f"HTTP {status} redirect to an invalid URL: {exc}") from exc
        if status in _RETRYABLE_STATUSES or status >= 500:
            raise _retryable(f"HTTP {status} from {url.host}")
        if not response.is_success:
            raise _permanent(f"HTTP {status} from {url.host}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise _permanent(f"the image is larger than {max_bytes} bytes ({declared} declared)")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _permanent(f"the image is larger than {max_bytes} bytes")
        return bytes(body)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _decode(data: bytes) -> tuple[str, str, int, int]:
    """(content type, extension, width, height) of an allowed image; FetchError otherwise.

    Runs in a worker thread: the full decode (which catches truncated and corrupt files
    that `verify` lets through) costs real CPU for large images.
    """
    try:
        with Image.open(io.BytesIO(data), formats=_OPENERS) as probe:
            format_name = probe.format or ""
            width, height = probe.size
            if width * height > MAX_PIXELS:
                raise _permanent(f"the image is too large to decode ({width}x{height})")
            probe.verify()
        with Image.open(io.BytesIO(data), formats=_OPENERS) as image:
            image.load()
    except FetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning is raised only where warnings are errors; elsewhere the pixel check
        # above refuses the same image, since MAX_PIXELS is below Pillow's threshold.
        raise _permanent(f"the image is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _permanent("the body is not a PNG, JPEG or WebP image") from exc
    except Exception as exc:  # corrupt input makes Pillow raise nearly anything
        raise _permanent(f"the image could not be decoded: {_describe(exc)}") from exc
    if format_name not in FORMATS:
        raise _permanent(f"the image format {format_name or 'unknown'} is not allowed")
    content_type, extension = FORMATS[format_name]
    return content_type, extension, width, height
