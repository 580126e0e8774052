"""Input images a client uploaded for its tasks to name in `image_ids`.

The bytes live in storage under `storage_key` (`uploads/<id>.<ext>`); the row says what they
are — decoded once when they arrived, so a task never sends EvoLink something it cannot
read — and when they go: the retention job deletes the object and the row at `expires_at`.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, Integer, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class Upload(Base):
    """One uploaded image, owned by the client that sent it."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    client: Mapped[str] = mapped_column(Text)
    # image/png, image/jpeg or image/webp: what the bytes are, not what the caller said.
    content_type: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("size_bytes > 0", name="size_bytes"),
        CheckConstraint("width > 0 AND height > 0", name="dimensions"),
        # The retention job's look for what is due.
        Index("ix_uploads_expires_at", "expires_at"),
    )
