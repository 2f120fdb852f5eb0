"""Raw sources and prepared datasets in the store: each dataset prepared once per store, cached once per node.

A prepared dataset depends on the dataset, the sample rate, the raw files and the preparation
format, so that is its key (shared by every shard, rerun and grid that uses the same store):

    <store>/prepared/<dataset>/<rate>hz/v<format>/<source fingerprint>/CURRENT     -> "<writer id>"
    <store>/prepared/<dataset>/<rate>hz/v<format>/<source fingerprint>/<writer id>/ fold*.npy, manifest.json
    <store>/prepared/<dataset>/<rate>hz/v<format>/<source fingerprint>/LEASE       while one writer prepares

A writer uploads its complete directory (`Storage.upload_dir`: manifest last) and only then points
`CURRENT` at it, so a reader never sees a half-written dataset; directories are never rewritten.
Concurrent writers (18 runs start at once) are serialised by the LEASE, best effort: S3 has no
compare-and-swap, so two writers can still race, which costs duplicate work, never a wrong read.

The source fingerprint is computed without downloading: an s3:// source by its object listing
(key, size, ETag), a folder by (path, size, mtime), the shipped demo by content.

On a node, `cached_prepared` copies a dataset once into a cache folder (a volume shared by the
node's pods) under an exclusive lock and hands out the folder under a shared lock, which eviction
respects: a dataset in use is never removed. The cache is not trusted: whenever a task uses an
entry, every file is checked against the SHA-256 sums of the store's directory manifest (itself
checked, and signed with INTERMIX_STORE_KEY where set) and an entry that differs in any file, holds
an extra one or a link is downloaded again. The chart also gives each namespace its own folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intermix_core.data import (
    FORMAT_VERSION,
    MANIFEST,
    DataError,
    Manifest,
    SilentAudioError,
    demo_data_dir,
    load_prepared,
    prepare_dataset,
)
from intermix_core.store.layout import CURRENT, LEASE, prepared_prefix, read_pointer, split_prepared_uri, write_pointer
from intermix_core.store.storage import LocalStorage, S3Storage, Storage, open_storage, sha256_file

COMPLETE = ".complete"
LEASE_SECONDS = 600.0  # a writer renews its lease every LEASE_SECONDS / 4; a dead writer's lapses
log = logging.getLogger(__name__)


def _digest(rows: list[Any]) -> str:
    return hashlib.sha256(json.dumps(sorted(rows), separators=(",", ":")).encode()).hexdigest()


def source_fingerprint(source: str) -> str:
    """SHA-256 naming the raw files of `source` ('demo', a folder or s3:// URI) without reading them all."""
    if source == "demo":
        root = demo_data_dir()
        return _digest([[p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()]
                        for p in root.rglob("*") if p.is_file()])
    if source.startswith("s3://"):
        store = open_storage(source)
        assert isinstance(store, S3Storage)
        prefix = f"{store.prefix}/" if store.prefix else ""
        rows = []
        try:
            for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix):
                rows += [[o["Key"][len(prefix):], o["Size"], o.get("ETag", "")] for o in page.get("Contents", [])]
        except Exception as err:  # boto raises many types; StorageError names the URI and what was expected
            raise store._error(err, "", "listing the raw dataset") from None  # noqa: SLF001 - same package
        if not rows:
            raise DataError(f"{source}: no objects there (expected a raw dataset uploaded with e.g. aws s3 sync)")
        return _digest(rows)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{source}: dataset folder not found (expected a folder, an s3:// URI or 'demo')")
    rows = []
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            rows.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return _digest(rows)


def _read_text(store: Any, key: str) -> str | None:
    text = read_pointer(store, key)
    return None if text is None else text.strip()


def _write_text(store: Any, key: str, text: str) -> None:
    write_pointer(store, key, text)


def current_prepared(store: Any, prefix: str) -> str | None:
    """The store key of the complete prepared directory under `prefix`, or None."""
    writer = _read_text(store, f"{prefix}/{CURRENT}")
    if writer and store.manifest(f"{prefix}/{writer}") is not None:
        return f"{prefix}/{writer}"
    return None


class _Lease:
    """A best-effort, expiring claim on preparing one dataset, renewed by a background thread."""

    def __init__(self, store: Any, key: str, owner: str, seconds: float) -> None:
        self.store, self.key, self.owner, self.seconds = store, key, owner, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="prepared-lease", daemon=True)

    def lapsed(self, holder: tuple[str, float], seen: dict[tuple[str, float], float]) -> bool:
        """Whether another writer's lease is dead: its process gone (same host), or not renewed for `seconds`.

        Renewal is judged by this reader's own monotonic clock between observations (`seen`: when each
        lease record was first seen), never by the writer's wall clock: a writer whose clock is off
        is neither cut short nor waited for longer.
        """
        host, _, rest = holder[0].rpartition("-")[0].rpartition("-")  # owner: <host>-<pid>-<hex>
        if host == socket.gethostname() and rest.isdigit() and not process_exists(int(rest)):
            return True
        first = seen.setdefault(holder, time.monotonic())
        return time.monotonic() - first > self.seconds

    def holder(self) -> tuple[str, float] | None:
        """(owner, expiry epoch) of the lease in the store, or None."""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            text = _read_text(self.store, self.key)
            if text:
                data = json.loads(text)
                return str(data["owner"]), float(data["expires"])
        return None

    def write(self) -> None:
        """Claim (or renew) the lease for `seconds` from now."""
        _write_text(self.store, self.key, json.dumps({"owner": self.owner, "expires": time.time() + self.seconds}))

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            with contextlib.suppress(Exception):  # a failed renewal is retried; the lease outlives two misses
                self.write()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the lease renewed inside the block; release it after."""
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            with contextlib.suppress(Exception):
                holder = self.holder()
                if holder and holder[0] == self.owner:
                    self.store.delete(self.key)


def process_exists(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_source(source: str, scratch: str | Path) -> Path:
    """A raw dataset folder: 'demo' (the shipped subset), an s3:// URI (downloaded to scratch), or a local folder."""
    if source == "demo":
        return demo_data_dir()
    if source.startswith("s3://"):
        open_storage(source).download_dir("", scratch)
        return Path(scratch)
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"{source}: dataset folder not found (expected a folder, an s3:// URI or 'demo')")
    return path


def prepare_source(source: str, dataset: str, sample_rate: int, out_dir: str | Path, *, progress: bool = False,
                   on_silent: str = "keep") -> Manifest:
    """Prepare `dataset` from `source` ('demo', an s3:// URI or a local folder) at `sample_rate` into out_dir."""
    with tempfile.TemporaryDirectory(prefix="intermix-source-") as scratch:
        root = resolve_source(source, scratch)
        return prepare_dataset(root, dataset, out_dir, sample_rate, progress=progress, on_silent=on_silent)


def publish_prepared(
    source: str, dataset: str, sample_rate: int, store_root: str, *, progress: bool = False,
    lease_seconds: float = LEASE_SECONDS, poll_seconds: float = 10.0, on_silent: str = "keep",
) -> tuple[str, Manifest]:
    """Make sure `dataset` at `sample_rate` from `source` is prepared in the store; return (its URI, its Manifest)."""
    store = open_storage(store_root)
    prefix = prepared_prefix(dataset, sample_rate, FORMAT_VERSION, source_fingerprint(source), on_silent)
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lease = _Lease(store, f"{prefix}/{LEASE}", owner, lease_seconds)
    seen: dict[tuple[str, float], float] = {}  # each lease record, and when this process first saw it
    said: str | None = None
    while True:
        done = current_prepared(store, prefix)
        if done is not None:
            log.info("%s: already prepared", store.uri(done))
            manifest = _stored_manifest(store, done)
            if on_silent == "error" and manifest.kept_silent:
                raise SilentAudioError(f"{store.uri(done)}: {len(manifest.kept_silent)} silent clip(s), e.g. "
                                       f"{manifest.kept_silent[0].source}, and on_silent is 'error'")
            return store.uri(prefix), manifest
        holder = lease.holder()
        if holder is None or holder[0] == owner or lease.lapsed(holder, seen):
            lease.write()
            time.sleep(min(1.0, poll_seconds))  # let a racing writer's claim land, then see who holds it
            holder = lease.holder()
            if holder is not None and holder[0] == owner:
                break
        if holder is not None and holder[0] != said:  # say what it waits for, once per holder (not only in a log)
            said = holder[0]
            print(f"intermix: waiting for {store.uri(prefix)}: {said} is preparing it (its lease is taken over if "
                  f"not renewed for {lease.seconds:.0f} s, or at once if that process is gone from this machine)",
                  file=sys.stderr)
        time.sleep(poll_seconds)
    with lease.held(), tempfile.TemporaryDirectory(prefix="intermix-prepare-") as tmp:
        out = Path(tmp) / "prepared"
        raw = resolve_source(source, Path(tmp) / "raw")
        manifest = prepare_dataset(raw, dataset, out, sample_rate, progress=progress, on_silent=on_silent)
        load_prepared(out, verify=False)  # fails here, not in 40 training tasks, if something is off
        (out / ".lock").unlink(missing_ok=True)
        writer = uuid.uuid4().hex[:12]
        store.upload_dir(out, f"{prefix}/{writer}")
        _write_text(store, f"{prefix}/{CURRENT}", writer)
    # the URI names the dataset, not the writer: tasks' cache keys stay the same whoever wrote it
    return store.uri(prefix), manifest


def _stored_manifest(store: Storage, key: str) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="intermix-manifest-") as tmp:
        path = store.download_file(f"{key}/{MANIFEST}", Path(tmp) / MANIFEST)
        return Manifest.model_validate_json(path.read_text())


# ---------------------------------------------------------------- the per-node cache


def _entry_name(uri: str) -> str:
    tail = uri.rstrip("/").split("/")[-5:]  # dataset/rate/v/fingerprint/writer: readable; the hash makes it unique
    return "-".join(tail) + "-" + hashlib.sha256(uri.encode()).hexdigest()[:8]


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _usable_cache(cache_dir: str | Path | None) -> Path | None:
    if not cache_dir:
        return None
    root = Path(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
        return root
    except OSError as err:
        log.warning("%s: data cache not writable (%s); downloading into the task's scratch space instead", root, err)
        return None


@contextlib.contextmanager
def cached_prepared(uri: str, cache_dir: str | Path | None = None, max_bytes: int | None = None) -> Iterator[Path]:
    """A local folder holding the prepared dataset at `uri`, valid inside the block.

    `uri` is what publish_prepared returned (its CURRENT names the directory to read) or a plain
    directory written with Storage.upload_dir. A local store is read in place. From S3 the dataset is downloaded once per `cache_dir` (the
    node's cache volume) and kept; without a usable cache_dir, into a temporary folder removed after.
    """
    root_uri, prefix = split_prepared_uri(uri)
    store = open_storage(root_uri)
    pointer = _read_text(store, f"{prefix}/{CURRENT}" if prefix else CURRENT)  # the prefix names its writer's folder
    writer = f"{prefix}/{pointer}" if prefix and pointer else (pointer or prefix)
    manifest = store.manifest(writer)
    if manifest is None:
        raise DataError(f"{uri}: no complete prepared dataset there (expected one written by the preprocess step)")
    if isinstance(store, LocalStorage):
        yield Path(store.root) / writer
        return
    root = _usable_cache(cache_dir)
    if root is None:
        with tempfile.TemporaryDirectory(prefix="intermix-data-") as tmp:
            store.download_dir(writer, tmp)
            yield Path(tmp)
        return
    entry = root / _entry_name(store.uri(writer))
    lock = root / f"{entry.name}.lock"
    marker = entry / COMPLETE
    stamp = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    for _ in range(5):
        with _flock(lock, fcntl.LOCK_EX):  # one download per node; the others wait for it
            if not (marker.is_file() and marker.read_text().strip() == stamp and _intact(entry, manifest)):
                _download_entry(store, writer, root, entry, stamp)
            os.utime(marker)  # last use, for eviction
        # the shared lock keeps eviction away while the task reads; an eviction between the two
        # locks (flock cannot downgrade atomically) shows as a missing marker: then fetch again
        with _flock(lock, fcntl.LOCK_SH):
            if marker.is_file() and marker.read_text().strip() == stamp:
                if max_bytes:
                    evict(root, max_bytes, keep=entry.name)
                yield entry
                return
    raise DataError(f"{entry}: the cached dataset keeps disappearing (is the cache too small for it?)")


def _intact(entry: Path, checksums: dict[str, str]) -> bool:
    """True if `entry` holds exactly the store's files (regular files, same SHA-256) besides its marker."""
    found = {}
    for path in entry.rglob("*"):
        rel = path.relative_to(entry).as_posix()
        if path.is_symlink() or (not path.is_dir() and not path.is_file()):
            found[rel] = "not a regular file"
        elif path.is_file() and rel != COMPLETE:
            found[rel] = path
    problem = next((rel for rel in sorted(set(found) | set(checksums)) if rel not in found or rel not in checksums
                    or not isinstance(found[rel], Path) or sha256_file(found[rel]) != checksums[rel]), None)
    if problem is not None:
        log.warning("%s: cached dataset differs from the store at %s (missing, extra, a link or another "
                    "checksum); downloading it again", entry, problem)
    return problem is None


def _download_entry(store: Any, prefix: str, root: Path, entry: Path, stamp: str) -> None:
    """Download the store's directory `prefix` into `entry` via a staging folder; the marker is written last."""
    shutil.rmtree(entry, ignore_errors=True)
    staging = root / f".staging-{entry.name}-{uuid.uuid4().hex[:8]}"
    try:
        store.download_dir(prefix, staging)
        (staging / COMPLETE).write_text(stamp)
        os.replace(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict(cache_dir: str | Path, max_bytes: int, keep: str | None = None) -> list[str]:
    """Remove least recently used cache entries not in use until the cache holds at most max_bytes; return their names."""
    root = Path(cache_dir)
    entries = sorted((p for p in root.iterdir() if p.is_dir() and (p / COMPLETE).is_file() and p.name != keep),
                     key=lambda p: (p / COMPLETE).stat().st_mtime)
    total = sum(_size(p) for p in root.iterdir() if p.is_dir())
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        with (root / f"{entry.name}.lock").open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # in use by another task: keep it
            except BlockingIOError:
                continue
            try:
                size = _size(entry)
                shutil.rmtree(entry, ignore_errors=True)
                total -= size
                removed.append(entry.name)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    return removed
