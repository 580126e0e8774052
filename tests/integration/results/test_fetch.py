"""Downloading one result image: decoded, bounded, and only from addresses it may reach."""

from __future__ import annotations

import hashlib
import io
import socket
import struct
import zlib
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

from app.results.fetch import MAX_REDIRECTS, FetchError, fetch_image

if TYPE_CHECKING:
    from tests.integration.results.conftest import Forbidden, ImageHost

LIMIT = 1_000_000


def image_bytes(kind: str, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small real image of `kind` (PNG, JPEG, WEBP, GIF, BMP)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=kind)
    return buffer.getvalue()


async def fetch_error(http: httpx.AsyncClient, url: str, **kw: object) -> FetchError:
    kw.setdefault("max_bytes", LIMIT)
    kw.setdefault("allow_loopback", True)
    with pytest.raises(FetchError) as caught:
        await fetch_image(http, url, **kw)  # type: ignore[arg-type]
    return caught.value


def noisy_png() -> bytes:
    """A PNG of random pixels, so that cutting its end loses pixel data."""
    buffer = io.BytesIO()
    pixels = hashlib.shake_256(b"noise").digest(64 * 64 * 3)
    Image.frombytes("RGB", (64, 64), pixels).save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height`, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("kind", "content_type", "extension"),
    [
        ("PNG", "image/png", "png"),
        ("JPEG", "image/jpeg", "jpg"),
        ("WEBP", "image/webp", "webp"),
    ],
)
async def test_an_image_is_decoded_with_its_size_type_and_digest(
    http: httpx.AsyncClient, host: ImageHost, kind: str, content_type: str, extension: str
) -> None:
    """Type and extension come from the decoded format, not from the response's header."""
    data = image_bytes(kind, (64, 48))
    url = host.serve("/out.bin", data, headers={"Content-Type": "application/octet-stream"})
    image = await fetch_image(http, url, max_bytes=LIMIT, allow_loopback=True)
    assert (image.width, image.height) == (64, 48)
    assert (image.content_type, image.extension) == (content_type, extension)
    assert image.data == data
    assert image.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_name_is_resolved_checked_and_pinned(
    http: httpx.AsyncClient, host: ImageHost
) -> None:
    """`localhost` is fetched from a checked address while the request keeps its name."""
    port = host.url.rsplit(":", 1)[1]
    host.serve("/named.png", image_bytes("PNG"))
    image = await fetch_image(
        http, f"http://localhost:{port}/named.png", max_bytes=LIMIT, allow_loopback=True
    )
    assert image.width == 64
    assert host.seen == [("/named.png", f"localhost:{port}")]


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not an image</html>",
        noisy_png()[:-400],
        image_bytes("BMP"),
        image_bytes("GIF"),
    ],
    ids=["html", "truncated-png", "bmp", "gif"],
)
async def test_anything_but_a_whole_allowed_image_is_permanent(
    http: httpx.AsyncClient, host: ImageHost, body: bytes
) -> None:
    """Text, a truncated file or a format outside PNG/JPEG/WebP (as the docs promise: not
    GIF, not BMP) is refused for good."""
    url = host.serve("/bad.png", body, headers={"Content-Type": "image/png"})
    error = await fetch_error(http, url)
    assert not error.retryable


@pytest.mark.parametrize("size", [(6000, 6000), (10000, 10000), (30000, 30000)])
async def test_a_decompression_bomb_is_refused_before_decoding(
    http: httpx.AsyncClient, host: ImageHost, size: tuple[int, int]
) -> None:
    """A tiny file claiming a huge canvas is refused without allocating its pixels."""
    url = host.serve("/bomb.png", png_header(*size))
    error = await fetch_error(http, url)
    assert not error.retryable
    assert "too large" in error.reason


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_permanent(
    http: httpx.AsyncClient, host: ImageHost, chunked: bool
) -> None:
    """Past `max_bytes` the download stops, with or without a declared length."""
    url = host.serve("/big.png", image_bytes("PNG", (300, 300)) + b"\0" * 5000, chunked=chunked)
    error = await fetch_error(http, url, max_bytes=2048)
    assert not error.retryable
    assert "larger than 2048 bytes" in error.reason


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(status, True) for status in (500, 503, 429, 408, 404, 403, 410)],
        *[(status, False) for status in (400, 401, 451, 304)],
    ],
)
async def test_statuses_are_classified(
    http: httpx.AsyncClient, host: ImageHost, status: int, retryable: bool
) -> None:
    """Server trouble and not-there-yet statuses are retryable; other refusals permanent."""
    error = await fetch_error(http, host.serve("/s.png", b"nope", status=status))
    assert error.retryable is retryable
    assert f"HTTP {status}" in error.reason


async def test_a_refused_connection_is_retryable(http: httpx.AsyncClient) -> None:
    """Nothing listening is a transport failure, worth another try."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await fetch_error(http, f"http://127.0.0.1:{port}/x.png")
    assert error.retryable


async def test_up_to_three_redirects_are_followed(http: httpx.AsyncClient, host: ImageHost) -> None:
    """Three hops (absolute and relative Locations) lead to the image."""
    host.serve("/final.png", image_bytes("PNG"))
    host.redirect("/hop1", "/final.png", status=301)
    host.redirect("/hop2", host.url + "/hop1", status=307)
    url = host.redirect("/hop3", "hop2", status=308)
    image = await fetch_image(http, url, max_bytes=LIMIT, allow_loopback=True)
    assert image.width == 64
    assert host.paths == ["/hop3", "/hop2", "/hop1", "/final.png"]


async def test_a_fourth_redirect_is_refused(http: httpx.AsyncClient, host: ImageHost) -> None:
    """The fourth hop is never requested."""
    host.serve("/final.png", image_bytes("PNG"))
    previous = "/final.png"
    for hop in range(1, MAX_REDIRECTS + 2):
        host.redirect(f"/hop{hop}", previous)
        previous = f"/hop{hop}"
    error = await fetch_error(http, host.url + previous)
    assert not error.retryable
    assert "redirects" in error.reason
    assert "/final.png" not in host.paths
    assert len(host.seen) == MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:192.168.1.1]/x.png",
        "ftp://files.example/x.png",
    ],
)
async def test_a_redirect_to_a_private_address_is_refused(
    http: httpx.AsyncClient, host: ImageHost, target: str
) -> None:
    """A redirect target is checked like the first URL, before any connection to it."""
    url = host.redirect("/go", target)
    error = await fetch_error(http, url)
    assert not error.retryable
    assert host.paths == ["/go"]


async def test_without_allow_loopback_loopback_and_http_are_refused(
    http: httpx.AsyncClient, host: ImageHost
) -> None:
    """The local host is off limits unless the provider itself is local."""
    url = host.serve("/x.png", image_bytes("PNG"))
    port = host.url.rsplit(":", 1)[1]
    for target in (url, f"https://127.0.0.1:{port}/x.png", f"https://localhost:{port}/x.png"):
        error = await fetch_error(http, target, allow_loopback=False)
        assert not error.retryable, target
        assert "non-public" in error.reason, target
    assert host.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x.png",
        "https://100.64.0.1/x.png",
        "https://0.0.0.0/x.png",
        "https://224.0.0.1/x.png",
        "https://[fe80::1]/x.png",
        "https://[::ffff:10.0.0.1]/x.png",
        "https://[64:ff9b::a9fe:a9fe]/x.png",
        "http://8.8.8.8/x.png",
        "https://user:secret@8.8.8.8/x.png",
        "https://:secret@8.8.8.8/x.png",
        "file:///etc/passwd",
        "not a url at all",
        # The same rule as for image_urls: hosts read as a resolver reads them.
        "https://127.1/x.png",
        "https://0x7f000001/x.png",
        "https://2130706433/x.png",
        "https://0177.0.0.1/x.png",
        "https://0/x.png",
        "https://10.1/x.png",
        "https://127.0.0.1./x.png",
        "https://localhost./x.png",
        "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/x.png",
        "https://[64:ff9b::7f00:1]/x.png",
        "https://[2002:7f00:1::]/x.png",
        "https://[3fff::1]/x.png",
        "https://8.8.8.8:0/x.png",
        "https://8.8.8.8:abc/x.png",
        "https://8.8.8.8/x\r\n.png",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://intranet/x.png",
    ],
)
async def test_refused_urls_make_no_connection(
    no_network: tuple[httpx.AsyncClient, Forbidden], url: str
) -> None:
    """Private and special addresses, plain http, credentials: refused before any request."""
    client, forbidden = no_network
    error = await fetch_error(client, url, allow_loopback=False)
    assert not error.retryable
    assert forbidden.attempts == []


async def test_a_numeric_host_is_fetched_from_the_address_it_was_judged_as(
    http: httpx.AsyncClient, host: ImageHost
) -> None:
    """`0x7f000001` is judged as 127.0.0.1 and the connection goes to 127.0.0.1 by that name."""
    port = host.url.rsplit(":", 1)[1]
    host.serve("/hex.png", image_bytes("PNG"))
    image = await fetch_image(
        http, f"http://0x7f000001:{port}/hex.png", max_bytes=LIMIT, allow_loopback=True
    )
    assert image.width == 64
    assert host.seen == [("/hex.png", f"127.0.0.1:{port}")]


async def test_plain_http_to_a_public_host_is_refused_even_with_loopback_allowed(
    no_network: tuple[httpx.AsyncClient, Forbidden],
) -> None:
    """Loopback allowance only relaxes the rules for loopback addresses."""
    client, forbidden = no_network
    error = await fetch_error(client, "http://8.8.8.8/x.png", allow_loopback=True)
    assert "plain http" in error.reason
    assert forbidden.attempts == []
