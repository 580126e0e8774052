"""Image bytes the tests upload: real encodings made with Pillow, and near misses."""

from __future__ import annotations

import io

from PIL import Image


def encoded(kind: str = "PNG", width: int = 512, height: int = 512) -> bytes:
    """A `width` by `height` image of one colour, encoded as `kind` (PNG, JPEG, WEBP, GIF)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buffer, format=kind)
    return buffer.getvalue()


def truncated_png() -> bytes:
    """A PNG cut off part-way through its image data: the signature and header are right."""
    data = encoded("PNG", 512, 512)
    return data[: len(data) // 2]
