"""Storage round trips against a real SeaweedFS S3 server and a local directory (same tests for both)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from intermix_core.store.storage import (
    MANIFEST,
    SIDECAR,
    S3Storage,
    Storage,
    StorageConfig,
    StorageError,
    open_storage,
    sha256_file,
)

from raw_store import raw_get, raw_put
from servers import S3Server


def make_dataset(root: Path) -> dict[str, bytes]:
    """A small dataset-like tree: audio-ish binaries in fold folders plus a metadata CSV."""
    files = {f"audio/fold{f}/{f}-{i:03d}-A.wav": os.urandom(2000 + 37 * i) for f in (1, 2) for i in range(3)}
    files["meta/labels.csv"] = b"filename,fold,target\n" + b"".join(f"{k},1,0\n".encode() for k in files)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_directory_round_trip_skips_unchanged(storage: Storage, tmp_path: Path) -> None:
    files = make_dataset(tmp_path / "src")
    manifest = storage.upload_dir(tmp_path / "src", "datasets/esc10")
    assert manifest == {rel: hashlib.sha256(d).hexdigest() for rel, d in files.items()}
    assert storage.exists("datasets/esc10")
    assert storage.list("datasets/esc10") == sorted(f"datasets/esc10/{r}" for r in files)
    assert storage.list("datasets") == storage.list("datasets/esc10")

    first = storage.download_dir("datasets/esc10", tmp_path / "dst")
    assert sorted(first.transferred) == sorted(files) and first.skipped == []
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data

    (tmp_path / "dst" / "meta/labels.csv").write_text("edited locally")
    second = storage.download_dir("datasets/esc10", tmp_path / "dst")
    assert second.transferred == ["meta/labels.csv"]
    assert len(second.skipped) == len(files) - 1
    assert (tmp_path / "dst" / "meta/labels.csv").read_bytes() == files["meta/labels.csv"]


def test_checkpoint_round_trip(storage: Storage, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(os.urandom(9 * 2**20))  # above boto3's 8 MiB multipart threshold
    sha = storage.upload_file(ckpt, "runs/g1/esc10/fold1/checkpoint.pt")
    assert sha == sha256_file(ckpt)
    assert storage.exists("runs/g1/esc10/fold1/checkpoint.pt")
    assert storage.list("runs/g1") == ["runs/g1/esc10/fold1/checkpoint.pt"]
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage._full("runs/g1/esc10/fold1/checkpoint.pt"))
        assert head["Metadata"]["sha256"] == sha
        assert storage.uri("a/b").startswith("s3://intermix-data/t-")
    out = storage.download_file("runs/g1/esc10/fold1/checkpoint.pt", tmp_path / "back" / "checkpoint.pt")
    assert out.read_bytes() == ckpt.read_bytes()
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary files left behind


def test_corrupted_object_is_detected(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights" * 1000)
    storage.upload_file(src, "ckpt/model.pt")
    raw_put(storage, "ckpt/model.pt", b"weights" * 999 + b"bitflip")
    dest = tmp_path / "dl" / "model.pt"
    with pytest.raises(StorageError, match="checksum mismatch") as err:
        storage.download_file("ckpt/model.pt", dest)
    assert storage.uri("ckpt/model.pt") in str(err.value)
    assert not dest.exists() and not any(dest.parent.iterdir())


def test_partial_upload_is_not_complete(storage: Storage, tmp_path: Path) -> None:
    raw_put(storage, "ckpt/half.pt", b"only the object, no completion marker")
    assert not storage.exists("ckpt/half.pt")
    assert storage.list("ckpt") == []
    with pytest.raises(StorageError, match="incomplete") as err:
        storage.download_file("ckpt/half.pt", tmp_path / "half.pt")
    assert storage.uri("ckpt/half.pt") in str(err.value)

    # a directory whose files arrived but whose manifest did not (upload interrupted before the end)
    files = make_dataset(tmp_path / "src")
    storage.upload_dir(tmp_path / "src", "datasets/cut")
    storage._delete_raw(f"datasets/cut/{MANIFEST}{SIDECAR}")
    assert not storage.exists("datasets/cut")
    with pytest.raises(StorageError, match="incomplete directory upload"):
        storage.download_dir("datasets/cut", tmp_path / "dst")
    assert len(storage.list("datasets/cut")) == len(files)  # the files themselves are complete objects

    # interrupted while sending the very first file: only the in-progress marker upload_dir writes first
    raw_put(storage, f"datasets/early/{MANIFEST}", b"{}")
    raw_put(storage, "datasets/early/audio/a.wav", b"half")
    with pytest.raises(StorageError, match="incomplete directory upload"):
        storage.download_dir("datasets/early", tmp_path / "dst2")


def test_foreign_directory_is_downloaded_unverified(storage: Storage, tmp_path: Path) -> None:
    """A raw dataset copied with other tools (no intermix markers at all) still downloads, flagged unverified."""
    files = {"ESC-50/audio/1-100-A-0.wav": os.urandom(3000), "ESC-50/meta/esc50.csv": b"filename,fold\n"}
    for rel, data in files.items():
        raw_put(storage, f"raw/{rel}", data)
    report = storage.download_dir("raw", tmp_path / "dst")
    assert report.verified is False and sorted(report.transferred) == sorted(files)
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data
    assert storage.list("raw") == []  # not complete intermix objects: list and exists stay strict
    with pytest.raises(StorageError, match="nothing there"):
        storage.download_dir("no/such/prefix", tmp_path / "dst3")


def test_missing_key_and_delete(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not found") as err:
        storage.download_file("nope/x.pt", tmp_path / "x.pt")
    assert storage.uri("nope/x.pt") in str(err.value)
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    storage.upload_file(src, "d/f.bin")
    make_dataset(tmp_path / "src")
    storage.upload_dir(tmp_path / "src", "d/set")
    storage.delete("d/f.bin")
    assert not storage.exists("d/f.bin")
    storage.delete("d/set")
    assert not storage.exists("d/set") and storage.list("d") == []
    with pytest.raises(ValueError, match="reserved"):
        storage.upload_file(src, "d/f.bin.sha256")


def test_wrong_credentials_name_the_uri(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_storage("s3://intermix-data/creds")  # endpoint from AWS_ENDPOINT_URL
    assert isinstance(store, S3Storage) and store.endpoint_url == s3_server.endpoint_url
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    for call in (lambda: store.list("x"), lambda: store.upload_file(src, "x/f.bin"),
                 lambda: store.download_file("x/f.bin", tmp_path / "g.bin")):
        with pytest.raises(StorageError, match="access denied") as err:
            call()
        assert "s3://intermix-data/creds/x" in str(err.value)


def test_missing_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_storage("s3://no-such-bucket/p")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist") as err:
        store.download_file("f.bin", tmp_path / "f.bin")
    assert "s3://no-such-bucket/p/f.bin" in str(err.value)


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("INTERMIX_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
    for k in names:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("INTERMIX_STORAGE_ROOT", raising=False)
    with pytest.raises(StorageError, match="INTERMIX_STORAGE_ROOT"):
        StorageConfig.from_env()
    monkeypatch.setenv("INTERMIX_STORAGE_ROOT", "s3://bkt/pre")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("INTERMIX_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    cfg = StorageConfig.from_env()
    assert (cfg.root, cfg.endpoint_url, cfg.is_s3) == ("s3://bkt/pre", "http://127.0.0.1:2", True)
    with pytest.raises(ValueError, match="no bucket"):
        StorageConfig(root="s3:///x")


def test_signed_markers_refuse_what_was_written_without_the_key(storage: Storage, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """INTERMIX_STORE_KEY set: objects and directories written with it read back; a replaced object with a
    recomputed plain marker, or one signed with another key, is refused."""
    from intermix_core.store.storage import SIGNING_KEY_ENV

    monkeypatch.setenv(SIGNING_KEY_ENV, "the-store-secret")
    src = tmp_path / "checkpoint.pt"
    src.write_bytes(b"weights" * 500)
    storage.upload_file(src, "g/fold1/checkpoint.pt")
    assert storage.download_file("g/fold1/checkpoint.pt", tmp_path / "back.pt").read_bytes() == src.read_bytes()
    make_dataset(tmp_path / "src")
    storage.upload_dir(tmp_path / "src", "g/dir")  # the directory's manifest marker is signed too
    assert storage.download_dir("g/dir", tmp_path / "dir").verified

    swapped = b"other weights"  # what an attacker with write access but without the key can do
    raw_put(storage, "g/fold1/checkpoint.pt", swapped)
    raw_put(storage, "g/fold1/checkpoint.pt" + SIDECAR, hashlib.sha256(swapped).hexdigest().encode())
    with pytest.raises(StorageError, match=r"checkpoint\.pt: no valid signature .*INTERMIX_STORE_KEY is set"):
        storage.download_file("g/fold1/checkpoint.pt", tmp_path / "x.pt")

    monkeypatch.setenv(SIGNING_KEY_ENV, "another-secret")
    storage.upload_file(src, "g/fold2/checkpoint.pt")
    monkeypatch.setenv(SIGNING_KEY_ENV, "the-store-secret")
    with pytest.raises(StorageError, match="no valid signature"):
        storage.download_file("g/fold2/checkpoint.pt", tmp_path / "y.pt")

    storage.upload_file(src, "g/fold3/checkpoint.pt")
    assert raw_get(storage, "g/fold3/checkpoint.pt" + SIDECAR).decode().count("hmac-sha256:") == 1
    # the same bytes with their validly signed marker, copied to another place: refused (the signature binds the key)
    raw_put(storage, "other-grid/fold3/checkpoint.pt", src.read_bytes())
    raw_put(storage, "other-grid/fold3/checkpoint.pt" + SIDECAR, raw_get(storage, "g/fold3/checkpoint.pt" + SIDECAR))
    with pytest.raises(StorageError, match="other-grid/fold3/checkpoint.pt: no valid signature"):
        storage.download_file("other-grid/fold3/checkpoint.pt", tmp_path / "moved.pt")
    sub = open_storage(storage.uri("g"))  # keys are the root's: a store opened at a sub-prefix reads other keys
    with pytest.raises(StorageError, match="no valid signature"):
        sub.download_file("fold3/checkpoint.pt", tmp_path / "w.pt")

    monkeypatch.delenv(SIGNING_KEY_ENV)  # without a key, signed markers still read (the digest is checked)
    assert storage.download_file("g/fold3/checkpoint.pt", tmp_path / "v.pt").read_bytes() == src.read_bytes()


def test_sealed_pointers_survive_racing_writers_and_are_bound_to_their_key(storage: Storage, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A pointer (LATEST.json, CURRENT, LEASE) is one sealed object: 8 threads replacing it at once leave one
    writer's text whole (an object and a marker from two writers used to pair: a permanent checksum mismatch),
    a sealed object copied to another key is refused, and with a store key an unsigned one is refused."""
    import threading

    from intermix_core.store.layout import read_pointer, write_pointer
    from intermix_core.store.storage import SIGNING_KEY_ENV

    texts = [json.dumps({"version": f"v{i}", "pad": "x" * (i * 300)}) for i in range(8)]
    for _ in range(5):
        threads = [threading.Thread(target=write_pointer, args=(storage, "g/reports/LATEST.json", t)) for t in texts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert read_pointer(storage, "g/reports/LATEST.json") in texts
    assert read_pointer(storage, "g/reports/absent.json") is None
    raw_put(storage, "h/reports/LATEST.json", raw_get(storage, "g/reports/LATEST.json"))
    with pytest.raises(StorageError, match="sealed for 'g/reports/LATEST.json'"):
        read_pointer(storage, "h/reports/LATEST.json")
    monkeypatch.setenv(SIGNING_KEY_ENV, "the-store-secret")
    with pytest.raises(StorageError, match="no valid signature"):
        read_pointer(storage, "g/reports/LATEST.json")  # written without the key
    write_pointer(storage, "g/reports/LATEST.json", texts[0])
    assert read_pointer(storage, "g/reports/LATEST.json") == texts[0]
