"""A fold's folder kept in step with its store prefix, so a task retried on another node resumes where it stopped.

The fold's checkpoint is pulled before training (the newer of the local and the stored one wins) and
pushed by a background thread while it trains (every `sync_seconds` once it changes) and at the end.
An unreachable store is ridden out: periodic pushes warn and try again later, and the end of a fold
(final checkpoint, then result) keeps retrying for STORE_PATIENCE seconds before it fails. A fold that
fails leaves a 'failed' result.json in the store, so the tables say why it is absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from intermix_core.config import ExperimentConfig
from intermix_core.method.checkpoint import load_checkpoint
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result, save_result
from intermix_core.store.layout import cell_prefix
from intermix_core.store.prepared import process_exists
from intermix_core.store.storage import Storage, StorageError
from intermix_core.tracking.tracker import FoldSuperseded

STORE_PATIENCE = 300.0  # seconds the end of a fold keeps retrying an unreachable store before it fails


def patiently(fn: Callable[[], Any], what: str, patience: float | None = None) -> Any:
    """Call fn, retrying transient store errors (after 1 s, doubling up to 30 s) for up to `patience` seconds."""
    deadline = time.monotonic() + (STORE_PATIENCE if patience is None else patience)
    delay = 1.0
    while True:
        try:
            return fn()
        except StorageError as err:
            if not err.transient or time.monotonic() + delay > deadline:
                raise
            print(f"warning: {what} failed, trying again in {delay:.0f} s: {err}", file=sys.stderr)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


PUSH_PREFIX = "intermix-push-"  # + "<pid>-": the snapshot folders of checkpoint pushes, in $TMPDIR


def remove_stale_push_folders() -> list[Path]:
    """Remove the snapshot folders of pushes whose process is gone (killed mid-push: a checkpoint-sized leftover)."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{PUSH_PREFIX}*-*"):
        pid = folder.name[len(PUSH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not process_exists(int(pid)) and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class CheckpointPusher:
    """Background thread that uploads out_dir/checkpoint.pt whenever it changes (and once at stop).

    `in_sync` says whether the store already holds the local file; if not, the first push uploads it.
    """

    def __init__(self, storage: Storage, prefix: str, out: Path, every: float, in_sync: bool) -> None:
        self.storage, self.key, self.path, self.every = storage, f"{prefix}/{CHECKPOINT}", out / CHECKPOINT, every
        self.pushed: float | None = self.path.stat().st_mtime if in_sync and self.path.exists() else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-push", daemon=True)

    def push(self) -> None:
        """Upload the checkpoint if it changed since the last upload (a snapshot: training may replace it meanwhile)."""
        if not self.path.exists():
            return
        mtime = self.path.stat().st_mtime
        if mtime != self.pushed:
            with tempfile.TemporaryDirectory(prefix=f"{PUSH_PREFIX}{os.getpid()}-") as tmp:
                snapshot = Path(tmp) / CHECKPOINT
                shutil.copyfile(self.path, snapshot)  # one open file: stable even if renamed over
                self.storage.upload_file(snapshot, self.key)
            self.pushed = mtime

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.push()
            except Exception as err:  # noqa: BLE001 - a failed periodic push is retried next time and at stop
                print(f"warning: checkpoint upload to {self.key} failed, retrying later: {err}", file=sys.stderr)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Push periodically inside the block, and once more when it ends (also on failure, unless superseded)."""
        self._thread.start()
        superseded = False
        try:
            yield
        except FoldSuperseded:
            superseded = True  # the fold belongs to a later attempt now: leave the store to it
            raise
        finally:
            self._stop.set()
            self._thread.join()
            if not superseded:
                patiently(self.push, f"uploading {self.key}")


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch of a loadable checkpoint (memory-mapped: its tensors are not read), or None."""
    if not path.is_file():
        return None
    try:
        return int(load_checkpoint(path, mmap=True)["epoch"])
    except ValueError as err:
        print(f"warning: ignoring the local {path.name}: {err}", file=sys.stderr)
        return None


def pull_fold(store: Storage, prefix: str, out: Path) -> bool:
    """Keep the newer of out_dir's and the store's checkpoint in out_dir (and the store's ok result with a final one).

    Returns True when the store holds what out_dir holds (nothing to push before training moves on).
    A stored checkpoint that does not load as one is refused (ValueError naming it): the store is
    not trusted to hold only what intermix wrote.
    """
    local = out / CHECKPOINT
    local_epoch = _checkpoint_epoch(local)
    stored_epoch = None
    if store.exists(f"{prefix}/{CHECKPOINT}"):
        fetched = out / f".stored-{CHECKPOINT}"
        try:
            store.download_file(f"{prefix}/{CHECKPOINT}", fetched)
        except StorageError as err:  # e.g. killed between a checkpoint's upload and its marker's
            print(f"warning: stored checkpoint unusable, training {prefix} without it: {err}", file=sys.stderr)
        else:
            try:
                stored_epoch = int(load_checkpoint(fetched, mmap=True)["epoch"])
            except ValueError as err:
                fetched.unlink(missing_ok=True)
                raise ValueError(f"{store.uri(prefix + '/' + CHECKPOINT)}: {err}") from None
            if local_epoch is None or stored_epoch > local_epoch:
                os.replace(fetched, local)
                local_epoch = stored_epoch
                (out / RESULT).unlink(missing_ok=True)  # a local result belongs to the replaced checkpoint
            fetched.unlink(missing_ok=True)
    if store.exists(f"{prefix}/{RESULT}") and local_epoch is not None and local_epoch == stored_epoch:
        with tempfile.TemporaryDirectory() as tmp:
            got = store.download_file(f"{prefix}/{RESULT}", Path(tmp) / RESULT)
            if load_result(got).status == "ok":
                shutil.copyfile(got, out / RESULT)
    return local_epoch == stored_epoch


def record_failure(store: Storage, grid_id: str, cfg: ExperimentConfig, fold: int, err: BaseException) -> None:
    """Leave a 'failed' result in the store (unless an ok one is there) so the tables say why a fold is absent."""
    with contextlib.suppress(Exception):
        key = f"{cell_prefix(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)}/{RESULT}"
        with tempfile.TemporaryDirectory() as tmp:
            if store.exists(key) and load_result(store.download_file(key, Path(tmp) / "old.json")).status == "ok":
                return
            failed = FoldResult(
                dataset=cfg.dataset, setup=cfg.setup_name, model=cfg.model, strategy=cfg.strategy.name, fold=fold,
                grid_id=grid_id,
                seed=cfg.seed, status="failed", error=f"{type(err).__name__}: {err}"[:2000],
                config=cfg.model_dump(mode="json"),
            )
            save_result(failed, Path(tmp) / RESULT)
            store.upload_file(Path(tmp) / RESULT, key)
