"""Where result images and uploaded input images live: a local folder by default, S3, GCS or
Azure in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import obstore
from obstore.store import AzureStore, GCSStore, ObjectStore, S3Store, from_url


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
    """Puts, reads, deletes and signs objects by key: results (`tasks/<task id>/<index>.<ext>`)
    and uploads (`uploads/<upload id>.<ext>`)."""

    def __init__(self, url: str, store: ObjectStore | None = None) -> None:
        """The store for `url`, or `store` as given (one configured in code)."""
        self.url = url
        self._store = store if store is not None else store_for(url)

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

    async def delete(self, key: str) -> None:
        """Delete the object; one already gone is not an error."""
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(f"could not delete {key}: {type(exc).__name__}: {exc}") from exc

    @property
    def can_sign(self) -> bool:
        """True for S3, GCS and Azure, which hand out presigned GETs themselves."""
        return isinstance(self._store, S3Store | GCSStore | AzureStore)

    async def signed_get(self, key: str, ttl_seconds: int) -> str:
        """A presigned GET of the object, valid `ttl_seconds`; only when `can_sign`."""
        store = self._store
        if not isinstance(store, S3Store | GCSStore | AzureStore):
            raise StorageError(f"{self.url} cannot sign links", retryable=False)
        try:
            return await obstore.sign_async(store, "GET", key, timedelta(seconds=ttl_seconds))
        except Exception as exc:
            raise StorageError(f"could not sign {key}: {type(exc).__name__}: {exc}") from exc

    async def keys_older_than(self, prefix: str, before: datetime) -> list[str]:
        """The keys under `prefix` last written before `before`."""
        found: list[str] = []
        try:
            async for batch in obstore.list(self._store, prefix=prefix):
                found += [meta["path"] for meta in batch if meta["last_modified"] < before]
        except Exception as exc:
            raise StorageError(f"could not list {prefix}: {type(exc).__name__}: {exc}") from exc
        return found


async def first_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    """Pull a stream's first chunk before an answer starts (once it has, a failure can no
    longer be a 503); StorageError, with the stream closed, when it cannot be read."""
    try:
        return await anext(chunks, b"")
    except StorageError:
        await close_stream(chunks)
        raise


async def stream_from(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`first`, then the rest of `chunks`; the store's stream is closed however it ends (a
    client that hangs up mid-download must not leave it open)."""
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await close_stream(chunks)


async def close_stream(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
