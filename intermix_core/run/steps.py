"""One function per pipeline step, with the storage and tracking wiring: components and the CLI call these.

Store keys are `intermix_core.store.layout`'s; how a fold's folder follows its store prefix (pull,
periodic push, retries through outages, failed results) is `intermix_core.run.sync`; aggregation is
`intermix_core.run.aggregate`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

from intermix_core.common.names import check_name
from intermix_core.config import ExperimentConfig, parse_config
from intermix_core.data import Manifest
from intermix_core.method.attack import attack_fold
from intermix_core.method.checkpoint import FoldBusy, fold_lock, load_checkpoint
from intermix_core.method.devices import cuda_driver_note
from intermix_core.method.pack import train_pack
from intermix_core.method.packing import parse_pack_item
from intermix_core.method.train import stop_on_signals, train_fold
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, fold_label, load_result, save_result
from intermix_core.run.sync import (
    CheckpointPusher, patiently, pull_fold, record_failure, remove_stale_push_folders,
)
from intermix_core.store.layout import cell_prefix
from intermix_core.store.prepared import cached_prepared, prepare_source, process_exists, publish_prepared
from intermix_core.store.storage import Storage, StorageError, open_storage
from intermix_core.tracking.tags import SUPERSEDED
from intermix_core.tracking.tracker import FoldSuperseded, Tracker, is_stale


# set by the local runner (`intermix run`) to its pid: its task processes stop when it is gone (SIGTERM, kill -9)
PARENT_ENV = "INTERMIX_PARENT_PID"
_watching: list[int] = []


def stop_with_parent(every: float = 2.0) -> None:
    """If PARENT_ENV names a process, stop this one (SIGTERM to itself) once that process is gone.

    A watchdog thread, not PR_SET_PDEATHSIG: that follows the task's direct parent, and a process
    between them (a shell) may outlive `intermix run`. The task's stdout and stderr are pipes to the gone
    runner: they are pointed at /dev/null first, so the task ends as stopped (its checkpoint, a
    KILLED run), not with a BrokenPipeError recorded as its failure.
    """
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit() or _watching:
        return
    _watching.append(int(parent))

    def watch() -> None:
        while process_exists(int(parent)):
            time.sleep(every)
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _storage(root: str | None) -> Storage | None:
    return open_storage(root) if root else None


def _tracker(tracking_uri: str | None) -> Tracker | None:
    if not tracking_uri:
        return None
    return Tracker(tracking_uri=tracking_uri)


def preprocess_step(source: str, dataset: str, sample_rate: int, out_dir: str | Path, progress: bool = False,
                    on_silent: str = "keep") -> Manifest:
    """Prepare `dataset` from `source` at `sample_rate` into out_dir; returns the Manifest."""
    return prepare_source(source, dataset, sample_rate, out_dir, progress=progress, on_silent=on_silent)


def train_step(
    config_json: str,
    data_dir: str | Path,
    fold: int,
    out_dir: str | Path,
    grid_id: str = "local",
    tracking_uri: str | None = None,
    checkpoint_root: str | None = None,
    *,
    restart: bool = False,
    progress: bool = False,
    device: str | None = None,
    sync_seconds: float = 60.0,
    keep_checkpoint: bool = True,
) -> FoldResult:
    """Train one fold (resuming from the newer of the local and stored checkpoints unless `restart`) and persist it.

    The store is brought up to date before the result: the fold's final checkpoint is uploaded first,
    its result.json last, so a result in the store always has its checkpoint beside it. With a store
    and `keep_checkpoint=False` the checkpoint is removed from out_dir once stored (pipelines pass the
    result on as an artifact, and the checkpoint only once, in the store). `restart` discards the
    fold's checkpoint and result both in out_dir and in the store, holding the fold lock: a folder
    another trainer holds is refused (FoldBusy) before anything is deleted or pulled, and so, with
    tracking, is a fold another attempt is training elsewhere (its MLflow run alive).
    """
    stop_with_parent()
    cfg = parse_config(json.loads(config_json), source="config_json")
    check_name(grid_id, "grid id")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = _storage(checkpoint_root)
    prefix = cell_prefix(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
    # SIGTERM/SIGINT are held from here to the result's upload: a signal stops the fold where it can end it cleanly
    with stop_on_signals(), fold_lock(out):  # the lock first: nothing is touched before the fold is ours
        if store is not None:  # what writers killed mid-upload left (a checkpoint-sized partial file, a snapshot)
            with contextlib.suppress(StorageError, OSError):  # best effort: an unreachable store is dealt with below
                store.remove_temporaries(prefix)
            remove_stale_push_folders()
        if restart:
            if store is not None and tracking_uri:
                _refuse_a_live_attempt(tracking_uri, grid_id, cfg, fold)  # the store's claim: another node's attempt
            for name in (RESULT, CHECKPOINT):
                (out / name).unlink(missing_ok=True)
                if store is not None and store.exists(f"{prefix}/{name}"):
                    store.delete(f"{prefix}/{name}")
        result = _train_locked(cfg, data_dir, fold, out, grid_id, tracking_uri, store, prefix, restart=restart,
                               progress=progress, device=device, sync_seconds=sync_seconds)
        if store is not None and not keep_checkpoint:
            (out / CHECKPOINT).unlink(missing_ok=True)
    return result


def _refuse_a_live_attempt(tracking_uri: str, grid_id: str, cfg: ExperimentConfig, fold: int) -> None:
    """FoldBusy if another attempt at the fold is alive (RUNNING with a fresh heartbeat): its stored files are its own.

    The fold lock guards a folder; the store prefix is shared by every node, and its claim is the
    fold's current MLflow run. A killed attempt (no heartbeat for STALE_AFTER) claims nothing.
    """
    tracker = Tracker(tracking_uri)
    try:
        now = tracker.now()
        live = [r for r in tracker.fold_runs(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
                if r.info.status == "RUNNING" and r.data.tags.get(SUPERSEDED) != "true" and not is_stale(r, now)]
    finally:
        tracker.close()
    if live:
        raise FoldBusy(f"{fold_label(cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)}: another attempt is "
                       f"training it (MLflow run {live[-1].info.run_id}, RUNNING with a recent heartbeat); nothing was "
                       "deleted: stop it first (or wait until it ends) to train it from scratch")


def _train_locked(cfg: ExperimentConfig, data_dir: str | Path, fold: int, out: Path, grid_id: str,
                  tracking_uri: str | None, store: Storage | None, prefix: str, *, restart: bool, progress: bool,
                  device: str | None, sync_seconds: float) -> FoldResult:
    """train_step's work, holding the fold lock: pull, train with periodic pushes, store checkpoint then result.

    A fold that fails leaves a failed result in the store. One that trained but could not be stored
    (a full or read-only store) ends its MLflow run FAILED, saying so: the run says what the store
    holds; the same command then stores the trained fold and finishes the run.
    """
    tracker = _tracker(tracking_uri)
    result = None
    try:
        in_sync = pull_fold(store, prefix, out) if store is not None and not restart else True
        pusher = CheckpointPusher(store, prefix, out, sync_seconds, in_sync) if store is not None else None
        with pusher.running() if pusher else contextlib.nullcontext():
            result = train_fold(cfg, data_dir, fold, out, tracker=tracker, grid_id=grid_id, progress=progress,
                                device=device)
        if store is not None:
            patiently(lambda: store.upload_file(out / RESULT, f"{prefix}/{RESULT}"),  # last: the completion marker
                      f"uploading {prefix}/{RESULT}")
            if tracker is not None and result.status == "ok":
                run_id = _run_id_of(out)
                if run_id is not None:
                    tracker.ensure_finished(run_id, result)  # a run ended FAILED by an earlier failed store write
        return result
    except (FoldBusy, FoldSuperseded):
        raise  # another attempt holds the fold: its outcome, not this refusal, belongs in the store
    except Exception as err:
        if store is not None:
            if result is not None and tracker is not None:
                _store_failed(tracker, out, store.uri(prefix), err)
            record_failure(store, grid_id, cfg, fold, err)
        raise
    finally:
        if tracker is not None:
            tracker.close()


def _run_id_of(out: Path) -> str | None:
    """The MLflow run id the fold folder's checkpoint records (None without one)."""
    try:
        return load_checkpoint(out / CHECKPOINT, mmap=True).get("run_id")
    except ValueError:
        return None


def _store_failed(tracker: Tracker, out: Path, where: str, err: Exception) -> None:
    """End the run of a fold that trained but could not be stored FAILED, naming why (the store holds no result)."""
    run_id = _run_id_of(out)
    if run_id is None:
        return
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    try:
        tracker.end_fold(run_id, "FAILED", f"trained, but not stored in {where} ({type(err).__name__}: {first}); the "
                         f"fold is kept in {out}: the same command stores it and finishes this run")
    except Exception as tracking_err:  # noqa: BLE001 - the store's error is what the user must see
        print(f"intermix: warning: MLflow run {run_id} could not be ended ({type(tracking_err).__name__})",
              file=sys.stderr)


def train_pack_step(
    config_json: str,
    data_dir: str | Path,
    folds: list[int],
    out_dir: str | Path,
    grid_id: str = "local",
    tracking_uri: str | None = None,
    checkpoint_root: str | None = None,
    *,
    restart: bool = False,
    progress: bool = False,
    device: str | None = None,
    sync_seconds: float = 60.0,
    keep_checkpoint: bool = True,
) -> dict[int, FoldResult | Exception]:
    """Train `folds` of one cell as one pack (`intermix_core.method.pack`), fold f in out_dir/fold<f>, each fold synced,
    tracked and persisted as `train_step` does one; per fold its result or the error that ended it alone.

    A fold that fails alone (a non-finite loss) leaves its failed result in the store and the others
    go on; an error that stops the pack leaves one for every fold.
    """
    stop_with_parent()
    cfg = parse_config(json.loads(config_json), source="config_json")
    check_name(grid_id, "grid id")
    outs = {f: Path(out_dir) / f"fold{f}" for f in folds}
    store = _storage(checkpoint_root)
    prefixes = {f: cell_prefix(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, f) for f in folds}
    for f, out in outs.items():
        out.mkdir(parents=True, exist_ok=True)
        if restart:
            for name in (RESULT, CHECKPOINT):
                (out / name).unlink(missing_ok=True)
                if store is not None and store.exists(f"{prefixes[f]}/{name}"):
                    store.delete(f"{prefixes[f]}/{name}")
    tracker = _tracker(tracking_uri)
    try:
        with contextlib.ExitStack() as pushing:
            if store is not None:
                for f, out in outs.items():
                    in_sync = pull_fold(store, prefixes[f], out) if not restart else True
                    pushing.enter_context(CheckpointPusher(store, prefixes[f], out, sync_seconds, in_sync).running())
            outcomes = train_pack(cfg, data_dir, folds, [outs[f] for f in folds], tracker=tracker, grid_id=grid_id,
                                  progress=progress, device=device)
    except (FoldBusy, FoldSuperseded):
        raise  # another attempt holds a fold: its outcome, not this refusal, belongs in the store
    except Exception as err:
        if store is not None:
            for f in folds:
                record_failure(store, grid_id, cfg, f, err)
        raise
    finally:
        if tracker is not None:
            tracker.close()
    if store is not None:
        for f, outcome in outcomes.items():
            if isinstance(outcome, FoldResult):
                patiently(lambda f=f: store.upload_file(outs[f] / RESULT, f"{prefixes[f]}/{RESULT}"),
                          f"uploading {prefixes[f]}/{RESULT}")
                if not keep_checkpoint:
                    (outs[f] / CHECKPOINT).unlink(missing_ok=True)
            elif not isinstance(outcome, FoldSuperseded):
                record_failure(store, grid_id, cfg, f, outcome)
    return outcomes


def train_pack_task(config_json: str, data_dir: str | Path, folds: str, out_dir: str | Path, grid_id: str,
                    tracking_uri: str | None, checkpoint_root: str | None, *, restart: bool = False,
                    device: str | None = None) -> str:
    """The pipeline's pack task: `train_pack_step` on the loop item's folds ('1 2 3'), a line per fold; the folds
    that failed alone, space separated (their FGSM task fails after the others'). RuntimeError when none trained."""
    outcomes = train_pack_step(config_json, data_dir, parse_pack_item(folds), out_dir, grid_id, tracking_uri,
                               checkpoint_root, restart=restart, keep_checkpoint=checkpoint_root is None, device=device)
    failed = {}
    for fold, outcome in outcomes.items():
        if isinstance(outcome, Exception):
            failed[fold] = f"{type(outcome).__name__}: {(str(outcome).splitlines() or [''])[0]}"
            print(f"fold {fold} failed: {failed[fold]}", flush=True)
        else:
            print(f"trained {outcome.label}: test error {outcome.test_error}", flush=True)
    if len(failed) == len(outcomes):
        raise RuntimeError(f"every fold of the pack {folds} failed: " + "; ".join(f"fold {f}: {m}" for f, m in failed.items()))
    return " ".join(str(f) for f in failed)


def attack_pack_task(trained_dir: str | Path, data_dir: str | Path, folds: str, out_dir: str | Path, grid_id: str,
                     tracking_uri: str | None, checkpoint_root: str | None, *, device: str | None = None) -> None:
    """The pipeline's pack FGSM task: `attack_step` on each fold of the loop item that trained (trained_dir/fold<f>)
    into out_dir/fold<f>; then RuntimeError naming the folds whose training failed (their FGSM cannot run)."""
    not_trained = []
    for fold in parse_pack_item(folds):
        where = Path(trained_dir) / f"fold{fold}"
        if not (where / RESULT).exists() or load_result(where / RESULT).status != "ok":
            not_trained.append(str(fold))
            continue
        r = attack_step(where, data_dir, fold, Path(out_dir) / f"fold{fold}", grid_id, tracking_uri, checkpoint_root,
                        device=device)
        print(f"FGSM {r.label}: {r.fgsm}", flush=True)
    if not_trained:
        raise RuntimeError(f"fold(s) {' '.join(not_trained)} of the pack {folds} failed training (their MLflow runs and "
                           "the store say why); `intermix rerun` trains one again alone")


def attack_step(
    trained_dir: str | Path,
    data_dir: str | Path,
    fold: int,
    out_dir: str | Path,
    grid_id: str = "local",
    tracking_uri: str | None = None,
    checkpoint_root: str | None = None,
    *,
    device: str | None = None,
) -> FoldResult:
    """FGSM on a trained fold; writes and persists the updated result.

    trained_dir holds result.json and checkpoint.pt; without the checkpoint there, it is fetched
    from the store (`checkpoint_root`), where train_step left it. The result is written only where
    it belongs: the fold, cell and grid that the result and its checkpoint both say (a mismatch is
    refused in one line, before anything is written).
    """
    stop_with_parent()
    check_name(grid_id, "grid id")
    trained = Path(trained_dir)
    result = load_result(trained / RESULT)
    if fold != result.fold:
        raise ValueError(f"{trained / RESULT}: the result of fold {result.fold}, not fold {fold}; a fold's result is "
                         "updated only under its own fold")
    if result.grid_id is not None and result.grid_id != grid_id:
        raise ValueError(f"{trained / RESULT}: a result of grid {result.grid_id}, not of grid {grid_id}; give that grid "
                         "id (or train into this grid)")
    store = _storage(checkpoint_root)
    prefix = cell_prefix(grid_id, result.dataset, result.setup, result.strategy, result.fold)
    with tempfile.TemporaryDirectory(prefix="intermix-attack-") as tmp:
        checkpoint = trained / CHECKPOINT
        if not checkpoint.exists() and store is not None:
            checkpoint = store.download_file(f"{prefix}/{CHECKPOINT}", Path(tmp) / CHECKPOINT)
        state = load_checkpoint(checkpoint)  # once: it can be hundreds of MB
    _check_same_fold(result, state, checkpoint)
    fgsm, fgsm_crop = attack_fold(state, data_dir, result.fold, device=device)
    run_id = state.get("run_id")
    del state
    result = result.model_copy(update={"fgsm": fgsm, "fgsm_crop": fgsm_crop})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_result(result, out / RESULT)
    if store is not None:
        store.upload_file(out / RESULT, f"{prefix}/{RESULT}")
    tracker = _tracker(tracking_uri)
    if tracker is not None and run_id:
        tracker.log_fgsm(run_id, fgsm, fgsm_crop)
    return result


def _check_same_fold(result: FoldResult, state: dict, checkpoint: Path) -> None:
    """Refuse a checkpoint that is not the result's fold (another cell, fold or grid)."""
    cfg = parse_config(state["config"], source=f"{checkpoint}: config")
    got = (cfg.dataset, cfg.setup_name, cfg.strategy.name, state["fold"])
    if got != result.key:
        raise ValueError(f"{checkpoint}: the checkpoint of {'/'.join(map(str, got))}, but the result beside it is of "
                         f"{result.label}; refused")
    if result.grid_id is not None and state.get("grid_id") not in (None, result.grid_id):
        raise ValueError(f"{checkpoint}: a checkpoint of grid {state['grid_id']}, the result of grid {result.grid_id}; "
                         "refused")


def attack_checkpoint_step(checkpoint: str | Path, data_dir: str | Path, fold: int | None = None, *,
                           device: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """FGSM on a lone checkpoint (no result.json to update): (10-crop errors, single-crop errors) per epsilon."""
    return attack_fold(checkpoint, data_dir, fold, device=device)


def prepare_shared_step(source: str, dataset: str, sample_rate: int, store_root: str, progress: bool = False,
                        on_silent: str = "keep") -> tuple[str, Manifest]:
    """Prepare `dataset` once into the store, keyed by dataset, sample rate, source fingerprint and format; (URI, Manifest)."""
    return publish_prepared(source, dataset, sample_rate, store_root, progress=progress, on_silent=on_silent)


def prepared_data(data_uri: str, cache_dir: str | None = None, max_cache_bytes: int | None = None) -> AbstractContextManager[Path]:
    """Context manager: a local folder with the prepared dataset at data_uri (via the node's cache_dir when given)."""
    return cached_prepared(data_uri, cache_dir, max_cache_bytes)


def warn_old_driver(device: str) -> None:
    """A GPU task's first line when the node's NVIDIA driver supports an older CUDA than the image's torch."""
    note = cuda_driver_note() if device != "cpu" else None
    if note:
        print(f"warning: {note}", flush=True)


def task_data(data_uri: str) -> AbstractContextManager[Path]:
    """`prepared_data` for a pipeline task: the node's cache from INTERMIX_DATA_CACHE (and _MAX_GB), set by the
    pipeline where a cache volume is mounted (pipelines/options.py)."""
    max_gb = float(os.environ.get("INTERMIX_DATA_CACHE_MAX_GB") or 0)
    return prepared_data(data_uri, os.environ.get("INTERMIX_DATA_CACHE") or None, int(max_gb * 2**30) or None)


def lane_done_step(store_root: str, key: str) -> None:
    """Mark a shard run as ended (its lane's next run may start, pipelines/gpu_budget.py): one sealed object."""
    open_storage(store_root).put_sealed(key, json.dumps({"ended": time.time()}))


def lane_wait_step(store_root: str, key: str, max_wait_s: float, poll_s: float = 60.0) -> bool:
    """Wait until the run before this one in its lane has ended (`key` is there); True then, False after max_wait_s.

    The gate of a run whose GPU tasks must wait for another run (a GPU budget below the grid's run
    count). After max_wait_s it lets the run start anyway, saying so: a lost marker (a run deleted
    before its exit handler ran) costs the budget for a while, never the grid.
    """
    if not key:
        return True
    store = open_storage(store_root)
    start = time.monotonic()
    said = start
    while True:
        try:
            if store.get_sealed(key) is not None:
                print(f"the run before this one in its lane has ended ({store.uri(key)}): starting", flush=True)
                return True
        except StorageError as err:  # unreachable for a while, or a damaged marker: waiting is the safe side
            print(f"warning: {err}", flush=True)
        waited = time.monotonic() - start
        if waited >= max_wait_s:
            print(f"warning: waited {waited / 3600:.1f} h for {store.uri(key)} (the run before this one in its "
                  "lane); starting anyway, so more GPU tasks than max_gpus may run for a while", flush=True)
            return False
        if time.monotonic() - said >= 600:
            print(f"waiting for the run before this one in its lane to end ({waited / 60:.0f} min so far)", flush=True)
            said = time.monotonic()
        time.sleep(min(poll_s, max(0.0, max_wait_s - waited)))
