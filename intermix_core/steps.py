"""One function per pipeline step, with the storage and tracking wiring: components and the CLI call these.

The grid store (a local directory or s3:// root) keeps what outlives one KFP run:

    <root>/<grid_id>/grid.json                                   the grid spec (for reruns by id)
    <root>/<grid_id>/<dataset>/<setup>/<strategy>/fold<k>/       checkpoint.pt, result.json
    <root>/<grid_id>/reports/                                    the latest aggregated tables

A fold's checkpoint is pulled before training and pushed while it trains (every `sync_seconds`
once it changes) and at the end, so a task retried on another node resumes where it stopped.
Aggregation reads every result under `<root>/<grid_id>/`, so reruns update the tables.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from intermix_core.config import parse_config
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result, save_result

GRID_FILE = "grid.json"
REPORTS = "reports"


def cell_prefix(grid_id: str, dataset: str, setup: str, strategy: str, fold: int) -> str:
    """Store key prefix of one fold: '<grid_id>/<dataset>/<setup>/<strategy>/fold<k>'."""
    return f"{grid_id}/{dataset}/{setup}/{strategy}/fold{fold}"


def _storage(root: str | None) -> Any:
    from intermix_core.storage import open_storage

    return open_storage(root) if root else None


def _tracker(tracking_uri: str | None) -> Any:
    if not tracking_uri:
        return None
    from intermix_core.tracking import Tracker

    return Tracker(tracking_uri=tracking_uri)


def resolve_source(source: str, scratch: str | Path) -> Path:
    """A raw dataset folder: 'demo' (the shipped subset), an s3:// URI (downloaded to scratch), or a local folder."""
    from intermix_core.data import DataError, demo_data_dir

    if source == "demo":
        return demo_data_dir()
    if source.startswith("s3://"):
        _storage(source).download_dir("", scratch)
        return Path(scratch)
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"{source}: dataset folder not found (expected a folder, an s3:// URI or 'demo')")
    return path


def preprocess_step(source: str, dataset: str, sample_rate: int, out_dir: str | Path, progress: bool = False) -> Any:
    """Prepare `dataset` from `source` at `sample_rate` into out_dir; returns the Manifest."""
    from intermix_core.data import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="intermix-source-") as scratch:
        root = resolve_source(source, scratch)
        return prepare_dataset(root, dataset, out_dir, sample_rate, progress=progress)


class _CheckpointPusher:
    """Background thread that uploads out_dir/checkpoint.pt whenever it changes (and once at stop)."""

    def __init__(self, storage: Any, prefix: str, out: Path, every: float) -> None:
        self.storage, self.key, self.path, self.every = storage, f"{prefix}/{CHECKPOINT}", out / CHECKPOINT, every
        self.pushed: float | None = self.path.stat().st_mtime if self.path.exists() else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-push", daemon=True)

    def push(self) -> None:
        """Upload the checkpoint if it changed since the last upload (a snapshot: training may replace it meanwhile)."""
        if not self.path.exists():
            return
        mtime = self.path.stat().st_mtime
        if mtime != self.pushed:
            with tempfile.TemporaryDirectory(prefix="intermix-push-") as tmp:
                snapshot = Path(tmp) / CHECKPOINT
                shutil.copyfile(self.path, snapshot)  # one open file: stable even if renamed over
                self.storage.upload_file(snapshot, self.key)
            self.pushed = mtime

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):  # a failed periodic push is retried next time and at stop
                self.push()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Push periodically inside the block, and once more when it ends (also on failure)."""
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            self.push()


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
    """Train one fold (resuming from the store's checkpoint unless `restart`) and persist checkpoint + result.

    With a store and `keep_checkpoint=False` the checkpoint is removed from out_dir once stored
    (pipelines pass the result on as an artifact, and the checkpoint only once, in the store).
    """
    from intermix_core.train import train_fold

    cfg = parse_config(json.loads(config_json), source="config_json")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = _storage(checkpoint_root)
    prefix = cell_prefix(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
    if store is not None:
        if restart:
            for name in (CHECKPOINT, RESULT):
                if store.exists(f"{prefix}/{name}"):
                    store.delete(f"{prefix}/{name}")
        else:
            _pull_fold(store, prefix, out)
    tracker = _tracker(tracking_uri)
    pusher = _CheckpointPusher(store, prefix, out, sync_seconds) if store is not None else None
    try:
        with pusher.running() if pusher else contextlib.nullcontext():
            result = train_fold(cfg, data_dir, fold, out, tracker=tracker, grid_id=grid_id, progress=progress, device=device)
    except Exception as err:
        if store is not None:
            _record_failure(store, prefix, cfg, fold, err)
        raise
    if store is not None:
        store.upload_file(out / RESULT, f"{prefix}/{RESULT}")
        if not keep_checkpoint:
            (out / CHECKPOINT).unlink(missing_ok=True)
    return result


def _pull_fold(store: Any, prefix: str, out: Path) -> None:
    """Fetch the fold's stored checkpoint and, if it is an ok one, its result (training then resumes or returns)."""
    from intermix_core.storage import StorageError

    if store.exists(f"{prefix}/{CHECKPOINT}"):
        try:
            store.download_file(f"{prefix}/{CHECKPOINT}", out / CHECKPOINT)
        except StorageError as err:  # e.g. killed between a checkpoint's upload and its marker's
            print(f"warning: stored checkpoint unusable, training {prefix} from the start: {err}", file=sys.stderr)
    if store.exists(f"{prefix}/{RESULT}"):
        with tempfile.TemporaryDirectory() as tmp:
            fetched = store.download_file(f"{prefix}/{RESULT}", Path(tmp) / RESULT)
            if load_result(fetched).status == "ok":
                shutil.copyfile(fetched, out / RESULT)


def _record_failure(store: Any, prefix: str, cfg: Any, fold: int, err: Exception) -> None:
    """Leave a 'failed' result in the store (unless an ok one is there) so the tables say why a fold is absent."""
    with contextlib.suppress(Exception):
        key = f"{prefix}/{RESULT}"
        with tempfile.TemporaryDirectory() as tmp:
            if store.exists(key) and load_result(store.download_file(key, Path(tmp) / "old.json")).status == "ok":
                return
            failed = FoldResult(
                dataset=cfg.dataset, setup=cfg.setup_name, model=cfg.model, strategy=cfg.strategy.name, fold=fold,
                seed=cfg.seed, status="failed", error=f"{type(err).__name__}: {err}"[:2000],
                config=cfg.model_dump(mode="json"),
            )
            save_result(failed, Path(tmp) / RESULT)
            store.upload_file(Path(tmp) / RESULT, key)


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
    from the store (`checkpoint_root`), where train_step left it.
    """
    from intermix_core.attack import attack_fold
    from intermix_core.train import load_checkpoint

    trained = Path(trained_dir)
    result = load_result(trained / RESULT)
    store = _storage(checkpoint_root)
    prefix = cell_prefix(grid_id, result.dataset, result.setup, result.strategy, fold)
    with tempfile.TemporaryDirectory(prefix="intermix-attack-") as tmp:
        checkpoint = trained / CHECKPOINT
        if not checkpoint.exists() and store is not None:
            checkpoint = store.download_file(f"{prefix}/{CHECKPOINT}", Path(tmp) / CHECKPOINT)
        state = load_checkpoint(checkpoint)  # once: it can be hundreds of MB
    fgsm, fgsm_crop = attack_fold(state, data_dir, fold, device=device)
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


def describe_absent(summary: Any, limit: int = 6) -> str:
    """One line on folds without a result ('' if none): how many, and the first few by name."""
    if not summary.missing:
        return ""
    names = [f"{m.dataset}/{m.setup}/{m.strategy}/fold{m.fold} ({m.reason})" for m in summary.missing]
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} fold(s) without a result: {', '.join(names[:limit])}{more}"


def fetch_grid_results(store_root: str, grid_id: str, dest: str | Path) -> list[Path]:
    """Download every fold result.json under `<store_root>/<grid_id>/` to dest (same layout); return the files."""
    store = _storage(store_root)
    files = []
    for key in store.list(grid_id):
        if key.endswith(f"/{RESULT}") and f"/{REPORTS}/" not in key:
            files.append(store.download_file(key, Path(dest) / key))
    return files


def save_grid_spec(store_root: str, grid_id: str, spec: dict[str, Any]) -> None:
    """Persist the grid spec as `<root>/<grid_id>/grid.json` so a rerun can find it by id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GRID_FILE
        path.write_text(json.dumps(spec, indent=2, sort_keys=True))
        _storage(store_root).upload_file(path, f"{grid_id}/{GRID_FILE}")


def load_grid_spec(store_root: str, grid_id: str) -> dict[str, Any]:
    """The grid spec saved by `save_grid_spec` (raises FileNotFoundError naming the location)."""
    store = _storage(store_root)
    key = f"{grid_id}/{GRID_FILE}"
    if not store.exists(key):
        raise FileNotFoundError(f"{store.uri(key)}: no grid saved under this id (run or submit the grid first)")
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(store.download_file(key, Path(tmp) / GRID_FILE).read_text())


def aggregate_step(
    results: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    expected: Sequence[Sequence[Any]] | None = None,
    tracking_uri: str | None = None,
    grid_id: str = "local",
    store_root: str | None = None,
) -> Any:
    """Aggregate fold results (files/dirs, plus the grid's store when store_root is set) into reports in out_dir.

    `expected` lists the grid's cells as [dataset, setup, strategy, fold]; cells without any result
    are reported as missing. With store_root, the reports are also published to `<root>/<grid_id>/reports/`.
    """
    from intermix_core.reports import write_reports
    from intermix_core.results import MissingFold, aggregate, collect_results

    items = [results] if isinstance(results, (str, Path)) else list(results)
    with tempfile.TemporaryDirectory(prefix="intermix-results-") as tmp:
        if store_root:
            items.append(Path(tmp))
            fetch_grid_results(store_root, grid_id, tmp)
        found = collect_results(items) if items else []
    keys = [(str(d), str(s), str(st), int(f)) for d, s, st, f in (expected or [])]
    folds: dict[str, list[int]] = {}
    for d, _, _, f in keys:
        folds.setdefault(d, []).append(f)
    summary = aggregate(found, {d: sorted(set(f)) for d, f in folds.items()} or None)
    have = {(r.dataset, r.setup, r.strategy) for r in found}
    absent = [MissingFold(dataset=d, setup=s, strategy=st, fold=f, reason="missing") for d, s, st, f in keys if (d, s, st) not in have]
    summary = summary.model_copy(update={"missing": summary.missing + absent})
    write_reports(summary, out_dir, found)
    if store_root:
        _storage(store_root).upload_dir(out_dir, f"{grid_id}/{REPORTS}")
    if tracking_uri:
        from intermix_core.results import log_summary_to_mlflow

        log_summary_to_mlflow(out_dir, tracking_uri=tracking_uri, grid_id=grid_id)
    return summary


def grid_aggregate_step(
    grid_json: str, out_dir: str | Path, store_root: str, tracking_uri: str | None = None
) -> tuple[str, Any]:
    """Aggregate a whole grid from its store (expected cells from the spec); also saves the spec there. Returns (grid id, Summary)."""
    from intermix_core.grid import expand, grid_id, parse_grid

    spec = json.loads(grid_json)
    grid = parse_grid(spec, source="grid_json")
    gid = grid_id(grid)
    save_grid_spec(store_root, gid, spec)
    expected = [c.key for c in expand(grid)]
    return gid, aggregate_step([], out_dir, expected, tracking_uri, gid, store_root)
