"""Reading and writing a store's objects behind the Storage API's back: what corruption, an interrupted upload or
someone with write access but without the store key can do."""

from __future__ import annotations

from intermix_core.store.storage import LocalStorage, S3Storage, Storage


def raw_put(storage: Storage, key: str, data: bytes) -> None:
    """Write bytes behind the Storage API's back (to simulate corruption or an interrupted upload)."""
    if isinstance(storage, LocalStorage):
        path = storage.path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        assert isinstance(storage, S3Storage)
        storage.client.put_object(Bucket=storage.bucket, Key=storage._full(key), Body=data)


def raw_get(storage: Storage, key: str) -> bytes:
    """Read bytes behind the Storage API's back."""
    if isinstance(storage, LocalStorage):
        return (storage.path / key).read_bytes()
    return storage.client.get_object(Bucket=storage.bucket, Key=storage._full(key))["Body"].read()
