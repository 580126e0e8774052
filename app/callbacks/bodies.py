"""What a callback's raw body becomes in Postgres, and back: readable, lossless, storable.

Postgres text refuses NUL and anything that is not UTF-8, so such a body cannot be kept
as it came. A body that is UTF-8 without NUL is kept verbatim (every well-formed callback
is). Any other body is kept as ESCAPED followed by its bytes as text, where a backslash
becomes `\\\\`, a NUL `\\x00` and each byte that is not part of valid UTF-8 `\\xNN`; the
rest stays as it was, so the text reads like the body. A body that itself begins with
ESCAPED is escaped too, so that `original_body` can always tell the two apart.
"""

from __future__ import annotations

import re
from typing import Final

ESCAPED: Final = "edithook:escaped-bytes\n"

# A backslash, a NUL, or a byte `surrogateescape` could not decode (U+DC80 to U+DCFF).
_TO_ESCAPE = re.compile("[\\\\\x00\udc80-\udcff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def stored_body(body: bytes) -> str:
    """The text to store for the raw `body`."""
    if b"\x00" not in body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if not text.startswith(ESCAPED):
                return text
    decoded = body.decode("utf-8", errors="surrogateescape")
    return ESCAPED + _TO_ESCAPE.sub(_escape, decoded)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def original_body(stored: str) -> bytes:
    """The bytes `stored_body` was given."""
    if not stored.startswith(ESCAPED):
        return stored.encode("utf-8")
    parts: list[bytes] = []
    position = len(ESCAPED)
    for match in _ESCAPE.finditer(stored, position):
        parts.append(stored[position : match.start()].encode("utf-8"))
        escape = match.group(1)
        parts.append(b"\\" if escape == "\\" else bytes([int(escape[1:], 16)]))
        position = match.end()
    parts.append(stored[position:].encode("utf-8"))
    return b"".join(parts)
