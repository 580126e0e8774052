"""Result images: real PNG bytes, flat colours, cheap to make and cached."""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

from PIL import Image

DEFAULT_SIZE = (1024, 1024)


def colour_for(seed: int | None, task_id: str, index: int) -> tuple[int, int, int]:
    """A colour that differs per image and is stable for a given seed (or task) and index."""
    basis = f"{seed}" if seed is not None else task_id
    digest = hashlib.sha256(f"{basis}:{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


@lru_cache(maxsize=32)
def render_png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A `width` by `height` PNG of one colour; flat, so it compresses to tens of KB at most."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
