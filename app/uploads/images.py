"""What an uploaded image is, judged from its bytes: its type, its size, whether it decodes.

EvoLink takes JPEG, PNG, BMP, WebP and TIFF at 384 to 3072 px a side, but its own error page
says TIFF (and HEIC, AVIF) fail, so edithook accepts the three every page agrees on: PNG,
JPEG and WebP. The type is read from the bytes' signature, never from what the caller
declared; only Pillow's decoder for that one type is tried; the dimensions are checked from
the header before anything is decoded (a 3072² image is the most ever decompressed), then
the whole image is decoded once, so that a truncated or corrupt file is refused here rather
than failing the task at EvoLink a minute later.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image, UnidentifiedImageError

MIN_SIDE, MAX_SIDE = 384, 3072


@dataclass(frozen=True)
class Format:
    pillow: str
    content_type: str
    extension: str


ACCEPTED: dict[str, Format] = {
    "PNG": Format("PNG", "image/png", "png"),
    "JPEG": Format("JPEG", "image/jpeg", "jpg"),
    "WEBP": Format("WEBP", "image/webp", "webp"),
}
EXTENSIONS = {fmt.extension: fmt for fmt in ACCEPTED.values()}
ACCEPTED_TYPES = tuple(fmt.content_type for fmt in ACCEPTED.values())


class Refusal(StrEnum):
    """Why bytes are not an image edithook can send: the kind decides the HTTP status."""

    TYPE = "type"  # not PNG, JPEG or WebP (415)
    UNDECODABLE = "undecodable"  # the right signature, but it does not decode (422)
    DIMENSIONS = "dimensions"  # a side outside 384 to 3072 px (422)


class ImageRefused(Exception):
    def __init__(self, kind: Refusal, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: Format
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return self.format.content_type

    @property
    def extension(self) -> str:
        return self.format.extension


def sniff(data: bytes) -> str | None:
    """The image type the bytes' signature names: PNG, JPEG, WEBP, or the name of a type
    that is refused (GIF, BMP, TIFF, HEIC, AVIF); None when no image signature matches."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"hevc"):
            return "HEIC"
    return None


def inspect_image(data: bytes, declared_type: str | None = None) -> ImageInfo:
    """The image's format and dimensions, or ImageRefused saying why it cannot be used.

    `declared_type` (what the caller said it is) only words the refusal of an unknown type.
    CPU-bound for large images (a full decode): run it in a thread.
    """
    kind = sniff(data)
    if kind not in ACCEPTED:
        what = f"a {kind} image" if kind else _described(declared_type)
        raise ImageRefused(Refusal.TYPE, f"The upload is {what}; send a PNG, JPEG or WebP image.")
    fmt = ACCEPTED[kind]
    try:
        with Image.open(io.BytesIO(data), formats=[fmt.pillow]) as image:
            width, height = image.size
            check_dimensions(width, height)
            image.load()
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(
            Refusal.DIMENSIONS,
            f"The image is far too large to decode; each side must be {MIN_SIDE}–{MAX_SIDE} px.",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError) as exc:
        raise ImageRefused(
            Refusal.UNDECODABLE,
            f"The upload starts like a {kind} image but does not decode ({_reason(exc)}); "
            "it may be truncated or corrupt.",
        ) from exc
    return ImageInfo(fmt, width, height)


def check_dimensions(width: int, height: int) -> None:
    """ImageRefused unless both sides are within what EvoLink accepts."""
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ImageRefused(
            Refusal.DIMENSIONS,
            f"The image is {width}x{height} px; EvoLink takes {MIN_SIDE}–{MAX_SIDE} px "
            "on each side.",
        )


def _described(declared_type: str | None) -> str:
    if declared_type and declared_type.split(";")[0].strip().lower() not in (
        "",
        "application/octet-stream",
    ):
        return f"not an image of a known type (declared {declared_type.split(';')[0].strip()})"
    return "not an image of a known type"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
