"""Where result images live: a local folder by default, S3, GCS or Azure in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import obstore
from obstore.store import ObjectStore, from_url


class StorageError(Exception):
    """The store could not do what was asked; `retryable` is False only for a missing object."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def store_for(url: str) -> ObjectStore:
    """An obstore store for `url`: `s3://`, `gs://`, `az://`, `file://` or a plain folder path.

    Cloud credentials come from the environment, as each provider's SDKs expect
    (AWS_*, GOOGLE_*, AZURE_*).
    """
    scheme = urlsplit(url).scheme
    if scheme in ("", "file"):
        folder = Path(urlsplit(url).path if scheme == "file" else url).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return from_url(folder.as_uri(), mkdir=True)
    return from_url(url)


class ResultStorage:
    """Puts and reads result objects by key (`tasks/<task id>/<index>.<ext>`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = store_for(url)

    @staticmethod
    def key_for(task_id: object, index: int, extension: str) -> str:
        return f"tasks/{task_id}/{index}.{extension}"

    async def put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._store, key, data)
        except Exception as exc:  # obstore raises many kinds; all mean "not stored"
            raise StorageError(f"could not store {key}: {type(exc).__name__}: {exc}") from exc

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes as chunks; StorageError(retryable=False) when it is missing."""
        try:
            result = await obstore.get_async(self._store, key)
        except FileNotFoundError as exc:
            raise StorageError(f"{key} is missing", retryable=False) from exc
        except Exception as exc:
            raise StorageError(f"could not read {key}: {type(exc).__name__}: {exc}") from exc
        async for chunk in result.stream():
            yield bytes(chunk)
