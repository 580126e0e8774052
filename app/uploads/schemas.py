"""The REST shape of an upload."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class UploadRead(BaseModel):
    """An uploaded image, as its client sees it; name it in a task's `image_ids`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b7e4c1d-2a35-4f6e-9c8b-7d1a2e3f4b5c",
                    "content_type": "image/png",
                    "size_bytes": 1843211,
                    "sha256": "9f2c0d3b5e0a4c1d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d",
                    "width": 1024,
                    "height": 1536,
                    "created_at": "2026-12-02T12:00:00.000000Z",
                    "expires_at": "2026-12-04T12:00:00.000000Z",
                }
            ]
        }
    )

    id: uuid.UUID
    content_type: str = Field(
        description="image/png, image/jpeg or image/webp, read from the bytes."
    )
    size_bytes: int
    sha256: str = Field(description="SHA-256 of the bytes, in hex.")
    width: int
    height: int
    created_at: datetime
    expires_at: datetime = Field(
        description="When it is deleted; a task created after this cannot name it."
    )
