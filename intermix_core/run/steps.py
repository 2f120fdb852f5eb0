"""One function per pipeline step, with the storage and tracking wiring: components and the CLI call these.

Store keys are `intermix_core.store.layout`'s; how a fold's folder follows its store prefix (pull,
periodic push, retries through outages, failed results) is `intermix_core.run.sync`; aggregation is
`intermix_core.run.aggregate`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

from intermix_core.common.names import check_name
from intermix_core.config import parse_config
from intermix_core.data import Manifest
from intermix_core.method.attack import attack_fold
from intermix_core.method.checkpoint import FoldBusy, load_checkpoint
from intermix_core.method.pack import train_pack
from intermix_core.method.train import train_fold
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result, save_result
from intermix_core.run.sync import CheckpointPusher, patiently, pull_fold, record_failure
from intermix_core.store.layout import cell_prefix
from intermix_core.store.prepared import cached_prepared, prepare_source, publish_prepared
from intermix_core.store.storage import Storage, open_storage
from intermix_core.tracking.tracker import FoldSuperseded, Tracker


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
    fold's checkpoint and result both in out_dir and in the store.
    """
    cfg = parse_config(json.loads(config_json), source="config_json")
    check_name(grid_id, "grid id")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = _storage(checkpoint_root)
    prefix = cell_prefix(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
    if restart:
        for name in (RESULT, CHECKPOINT):
            (out / name).unlink(missing_ok=True)
            if store is not None and store.exists(f"{prefix}/{name}"):
                store.delete(f"{prefix}/{name}")
    tracker = _tracker(tracking_uri)
    try:
        in_sync = pull_fold(store, prefix, out) if store is not None and not restart else True
        pusher = CheckpointPusher(store, prefix, out, sync_seconds, in_sync) if store is not None else None
        with pusher.running() if pusher else contextlib.nullcontext():
            result = train_fold(cfg, data_dir, fold, out, tracker=tracker, grid_id=grid_id, progress=progress,
                                device=device)
    except (FoldBusy, FoldSuperseded):
        raise  # another attempt holds the fold: its outcome, not this refusal, belongs in the store
    except Exception as err:
        if store is not None:
            record_failure(store, grid_id, cfg, fold, err)
        raise
    finally:
        if tracker is not None:
            tracker.close()
    if store is not None:
        patiently(lambda: store.upload_file(out / RESULT, f"{prefix}/{RESULT}"),  # last: the fold's completion marker
                   f"uploading {prefix}/{RESULT}")
        if not keep_checkpoint:
            (out / CHECKPOINT).unlink(missing_ok=True)
    return result


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
