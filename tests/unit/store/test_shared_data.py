"""Prepared datasets kept once in the grid store and cached once per node (intermix_core/store/prepared.py),
against the real SeaweedFS S3 server and real local folders; concurrent writers and readers are real
threads and processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from intermix_core.data import FORMAT_VERSION, Manifest, load_prepared
from intermix_core.run.steps import prepare_shared_step, prepared_data
from intermix_core.store.layout import read_pointer
from intermix_core.store.prepared import (
    COMPLETE,
    CURRENT,
    cached_prepared,
    evict,
    prepared_prefix,
    publish_prepared,
    source_fingerprint,
)
from intermix_core.store.storage import open_storage
from intermix_core.testing import demo_subset

from together import at_once

RATE = 8000  # the demo subset at M18's rate: the cheapest preparation


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return f"s3://intermix-data/shared-{time.time_ns()}"


def test_fingerprint_follows_the_raw_files(tmp_path: Path):
    raw = tmp_path / "raw"
    shutil.copytree(Path(__file__).resolve().parents[3] / "intermix_core" / "demo_data" / "esc10_demo", raw)
    first = source_fingerprint(str(raw))
    assert source_fingerprint(str(raw)) == first  # stable
    clip = next((raw / "audio").iterdir())
    clip.write_bytes(clip.read_bytes() + b"\0")
    assert source_fingerprint(str(raw)) != first  # one file changed: another dataset
    assert len(source_fingerprint("demo")) == 64
    assert prepared_prefix("esc10", RATE, FORMAT_VERSION, first) == f"prepared/esc10/8000hz/v{FORMAT_VERSION}/{first[:20]}"


def test_prepared_once_into_s3_and_reused_by_every_task(s3_env: str, tmp_path: Path):
    uri, manifest = prepare_shared_step("demo", "esc10", RATE, s3_env)
    store = open_storage(s3_env)
    prefix = prepared_prefix("esc10", RATE, FORMAT_VERSION, source_fingerprint("demo"))
    assert uri == store.uri(prefix)  # names the dataset, not who wrote it: a stable cache key for tasks
    writer = read_pointer(store, f"{prefix}/{CURRENT}").strip()
    assert store.manifest(f"{prefix}/{writer}") is not None and read_pointer(store, f"{prefix}/LEASE") is None
    # a second shard, rerun or grid with the same data: nothing is prepared again
    again, _ = prepare_shared_step("demo", "esc10", RATE, s3_env)
    assert again == uri
    writers = {k[len(prefix) + 1:].split("/")[0] for k in store.list(prefix)}  # sealed pointers are not listed
    assert writers == {writer}
    # a task reads it through the node cache: downloaded once, then served from the cache
    cache = tmp_path / "node-cache"
    with prepared_data(uri, str(cache)) as data:
        assert load_prepared(data).folds == manifest.folds
        entry = data
    store.delete(f"{prefix}/{writer}/fold1.npy")  # gone from S3: the cached copy must not need it
    with prepared_data(uri, str(cache)) as data:
        assert data == entry and load_prepared(data).folds == manifest.folds
    # without a cache volume the task downloads into its scratch space and removes it after
    store.delete(prefix)
    prepare_shared_step("demo", "esc10", RATE, s3_env)
    with prepared_data(uri) as data:
        scratch = data
        assert (data / "manifest.json").is_file()
    assert not scratch.exists()


def _prepare_in_process(store_root: str, out: str) -> None:
    uri, _ = publish_prepared("demo", "esc10", RATE, store_root, poll_seconds=0.2)
    Path(out).write_text(uri)


def test_concurrent_writers_prepare_once(tmp_path: Path):
    """Several preprocess tasks of the same dataset start together (18 runs are submitted at once)."""
    store_root = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_prepare_in_process, args=(store_root, str(tmp_path / f"uri{i}"))) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    uris = {(tmp_path / f"uri{i}").read_text() for i in range(3)}
    assert len(uris) == 1
    prefix = Path(uris.pop())
    written = [d for d in prefix.iterdir() if d.is_dir()]
    assert len(written) == 1, written  # one preparation; the others waited for it (the lease)
    assert json.loads((prefix / CURRENT).read_text())["text"] == written[0].name  # a sealed pointer


def test_a_local_store_is_read_in_place(tmp_path: Path):
    uri, _ = publish_prepared("demo", "esc10", RATE, str(tmp_path / "store"))
    with cached_prepared(uri, tmp_path / "cache") as data:
        assert data.parent == Path(uri)
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_node_cache_one_download_for_concurrent_tasks(s3_env: str, tmp_path: Path):
    uri, _ = publish_prepared("demo", "esc10", RATE, s3_env)
    cache = tmp_path / "cache"
    seen: list[Path] = []

    def task() -> None:
        with cached_prepared(uri, cache) as data:
            seen.append(data)
            time.sleep(0.5)  # in use while the others arrive

    errors = at_once([task] * 4)
    assert not errors and len(set(seen)) == 1
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert entries == [seen[0]] and (seen[0] / COMPLETE).is_file()  # one entry, no leftover staging folders


def test_eviction_keeps_datasets_in_use(tmp_path: Path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for i, name in enumerate(["old", "busy", "new"]):
        entry = cache / name
        entry.mkdir()
        (entry / "fold1.npy").write_bytes(b"x" * 1000)
        (entry / COMPLETE).write_text("stamp")
        t = time.time() - 100 + i
        os.utime(entry / COMPLETE, (t, t))
    with (cache / "busy.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # a task reads "busy"
        removed = evict(cache, max_bytes=1100)
        fcntl.flock(held, fcntl.LOCK_UN)
    # least recently used first; "busy" is in use, so "new" goes although it was used later
    assert removed == ["old", "new"]
    assert [p.name for p in cache.iterdir() if p.is_dir()] == ["busy"]
    assert evict(cache, max_bytes=1100) == []  # within the limit now


def test_unusable_cache_falls_back_to_scratch(s3_env: str, tmp_path: Path):
    """A cache folder the task cannot create or write (e.g. a hostPath owned by root) costs a download, not the task."""
    uri, _ = publish_prepared("demo", "esc10", RATE, s3_env)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with cached_prepared(uri, blocker / "cache") as data:
        assert (data / "manifest.json").is_file() and not str(data).startswith(str(blocker))


@pytest.mark.parametrize("tamper", ["fold", "fold-and-manifest", "extra-file", "link"])
def test_a_tampered_cache_entry_is_downloaded_again(s3_env: str, tmp_path: Path, tamper: str):
    """Another tenant with the same uid can write into a node cache: an entry whose files differ from the store's
    checksums is not used (however consistent its own manifest.json and marker look), but fetched again."""
    import json

    uri, _ = publish_prepared("demo", "esc10", RATE, s3_env)
    cache = tmp_path / "cache"
    with cached_prepared(uri, cache) as data:
        entry = data
        original = {p.name: p.read_bytes() for p in entry.iterdir()}
    fold = entry / "fold1.npy"
    if tamper.startswith("fold"):
        poisoned = bytearray(fold.read_bytes())
        poisoned[-64:] = bytes(64)  # the last samples silenced: same size, the manifest's size check passes
        fold.write_bytes(bytes(poisoned))
    if tamper == "fold-and-manifest":  # a consistent forgery: the local manifest carries the new checksum, resealed
        manifest = json.loads((entry / "manifest.json").read_text())
        for ff in manifest["fold_files"]:
            if ff["file"] == "fold1.npy":
                ff["sha256"] = hashlib.sha256(fold.read_bytes()).hexdigest()
        forged = Manifest.model_validate(manifest).sealed()  # its digest recomputed: it needs no secret
        (entry / "manifest.json").write_text(forged.model_dump_json())
        load_prepared(entry)  # the entry verifies against its own manifest: only the store can tell
    if tamper == "extra-file":
        (entry / "fold9.npy").write_bytes(b"planted")
    if tamper == "link":
        planted = tmp_path / "planted.npy"
        planted.write_bytes(original["fold1.npy"])
        fold.unlink()
        fold.symlink_to(planted)
    with cached_prepared(uri, cache) as data:
        assert data == entry
        assert {p.name: p.read_bytes() for p in data.iterdir()} == original  # the store's files again
        assert not (data / "fold1.npy").is_symlink()
        load_prepared(data)


def test_a_lease_left_by_a_dead_or_silent_writer_is_taken_over_saying_what_it_waits_for(tmp_path: Path, capsys):
    """kill -9 during preprocessing left a LEASE: the next run waited 640 s, silent, its bar at 100 %. A lease of a
    process gone from this machine is taken over at once; one from elsewhere that is not renewed, after the lease
    time by the reader's own clock (its expiry says 2 days ahead, as from a clock that is wrong), with a line."""
    import socket
    import subprocess
    import sys

    from intermix_core.store.layout import write_pointer
    from intermix_core.store.prepared import prepared_prefix, source_fingerprint

    store_root = str(tmp_path / "store")
    src = demo_subset(tmp_path / "src", per_class_per_fold=1, folds=(1,), seconds=1.0)
    prefix = prepared_prefix("esc10", RATE, FORMAT_VERSION, source_fingerprint(str(src)), "keep")
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    lease = f"{prefix}/LEASE"
    write_pointer(open_storage(store_root), lease, json.dumps({"owner": f"{socket.gethostname()}-{gone}-dead0000",
                                                               "expires": time.time() + 2 * 86400}))
    start = time.monotonic()
    publish_prepared(str(src), "esc10", RATE, store_root, lease_seconds=60, poll_seconds=0.2)
    assert time.monotonic() - start < 30 and "waiting for" not in capsys.readouterr().err

    src2 = demo_subset(tmp_path / "src2", per_class_per_fold=1, folds=(2,), seconds=1.0)
    prefix2 = prepared_prefix("esc10", RATE, FORMAT_VERSION, source_fingerprint(str(src2)), "keep")
    write_pointer(open_storage(store_root), f"{prefix2}/LEASE",
                  json.dumps({"owner": "other-node-7-silent00", "expires": time.time() + 2 * 86400}))
    start = time.monotonic()
    publish_prepared(str(src2), "esc10", RATE, store_root, lease_seconds=2, poll_seconds=0.2)
    waited = time.monotonic() - start
    err = capsys.readouterr().err
    assert 2 <= waited < 30
    assert "intermix: waiting for " in err and "other-node-7-silent00 is preparing it" in err
    assert err.count("waiting for") == 1
