"""One function per pipeline step, with the storage and tracking wiring: components and the CLI call these.

The grid store (a local directory or s3:// root) keeps what outlives one KFP run:

    <root>/<grid_id>/grid.json                                   the grid spec (for reruns by id)
    <root>/<grid_id>/<dataset>/<setup>/<strategy>/fold<k>/       checkpoint.pt, result.json
    <root>/<grid_id>/reports/                                    the latest aggregated tables (LATEST.json, versions/)
    <root>/prepared/<dataset>/<rate>hz/v<format>/<fingerprint>/  prepared datasets, shared by grids (shared_data)

A fold's checkpoint is pulled before training and pushed while it trains (every `sync_seconds`
once it changes) and at the end, so a task retried on another node resumes where it stopped. An
unreachable store is ridden out: periodic pushes warn and try again later, and the end of a fold
(final checkpoint, then result) keeps retrying for STORE_PATIENCE seconds before it fails.
Aggregation reads every result under `<root>/<grid_id>/`, so reruns update the tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from intermix_core.config import parse_config
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, fold_label, load_result, save_result

GRID_FILE = "grid.json"
STORE_PATIENCE = 300.0  # seconds the end of a fold keeps retrying an unreachable store before it fails
REPORTS = "reports"


def cell_prefix(grid_id: str, dataset: str, setup: str, strategy: str, fold: int) -> str:
    """Store key prefix of one fold: '<grid_id>/<dataset>/<setup>/<strategy>/fold<k>'."""
    return f"{grid_id}/{fold_label(dataset, setup, strategy, fold)}"


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


def preprocess_step(source: str, dataset: str, sample_rate: int, out_dir: str | Path, progress: bool = False,
                    on_silent: str = "keep") -> Any:
    """Prepare `dataset` from `source` at `sample_rate` into out_dir; returns the Manifest."""
    from intermix_core.data import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="intermix-source-") as scratch:
        root = resolve_source(source, scratch)
        return prepare_dataset(root, dataset, out_dir, sample_rate, progress=progress, on_silent=on_silent)


def _patiently(fn: Callable[[], Any], what: str, patience: float | None = None) -> Any:
    """Call fn, retrying transient store errors (after 1 s, doubling up to 30 s) for up to `patience` seconds."""
    from intermix_core.storage import StorageError

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


class _CheckpointPusher:
    """Background thread that uploads out_dir/checkpoint.pt whenever it changes (and once at stop).

    `in_sync` says whether the store already holds the local file; if not, the first push uploads it.
    """

    def __init__(self, storage: Any, prefix: str, out: Path, every: float, in_sync: bool) -> None:
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
            with tempfile.TemporaryDirectory(prefix="intermix-push-") as tmp:
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
        from intermix_core.tracking import FoldSuperseded

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
                _patiently(self.push, f"uploading {self.key}")


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
    from intermix_core.tracking import FoldSuperseded
    from intermix_core.train import FoldBusy, train_fold

    cfg = parse_config(json.loads(config_json), source="config_json")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = _storage(checkpoint_root)
    prefix = cell_prefix(grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
    if restart:
        for name in (RESULT, CHECKPOINT):
            (out / name).unlink(missing_ok=True)
            if store is not None and store.exists(f"{prefix}/{name}"):
                store.delete(f"{prefix}/{name}")
    try:
        in_sync = _pull_fold(store, prefix, out) if store is not None and not restart else True
        pusher = _CheckpointPusher(store, prefix, out, sync_seconds, in_sync) if store is not None else None
        with pusher.running() if pusher else contextlib.nullcontext():
            result = train_fold(cfg, data_dir, fold, out, tracker=_tracker(tracking_uri), grid_id=grid_id,
                                progress=progress, device=device)
    except (FoldBusy, FoldSuperseded):
        raise  # another attempt holds the fold: its outcome, not this refusal, belongs in the store
    except Exception as err:
        if store is not None:
            _record_failure(store, prefix, cfg, fold, err)
        raise
    if store is not None:
        _patiently(lambda: store.upload_file(out / RESULT, f"{prefix}/{RESULT}"),  # last: the fold's completion marker
                   f"uploading {prefix}/{RESULT}")
        if not keep_checkpoint:
            (out / CHECKPOINT).unlink(missing_ok=True)
    return result


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch of a loadable checkpoint (memory-mapped: its tensors are not read), or None."""
    from intermix_core.train import load_checkpoint

    if not path.is_file():
        return None
    try:
        return int(load_checkpoint(path, mmap=True)["epoch"])
    except ValueError as err:
        print(f"warning: ignoring the local {path.name}: {err}", file=sys.stderr)
        return None


def _pull_fold(store: Any, prefix: str, out: Path) -> bool:
    """Keep the newer of out_dir's and the store's checkpoint in out_dir (and the store's ok result with a final one).

    Returns True when the store holds what out_dir holds (nothing to push before training moves on).
    A stored checkpoint that does not load as one is refused (ValueError naming it): the store is
    not trusted to hold only what intermix wrote.
    """
    from intermix_core.storage import StorageError
    from intermix_core.train import load_checkpoint

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


def attack_checkpoint_step(checkpoint: str | Path, data_dir: str | Path, fold: int | None = None, *,
                           device: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """FGSM on a lone checkpoint (no result.json to update): (10-crop errors, single-crop errors) per epsilon."""
    from intermix_core.attack import attack_fold

    return attack_fold(checkpoint, data_dir, fold, device=device)


def describe_absent(summary: Any, limit: int = 6) -> str:
    """One line on folds without a result ('' if none): how many, and the first few by name."""
    if not summary.missing:
        return ""
    names = [f"{fold_label(m.dataset, m.setup, m.strategy, m.fold)} ({m.reason})" for m in summary.missing]
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
    are reported as missing. With store_root, the reports are also published as one version under
    `<root>/<grid_id>/reports/` (intermix_core.publish: concurrent aggregations, the newest wins).
    """
    from intermix_core.reports import write_reports
    from intermix_core.results import MissingFold, aggregate, collect_results

    items = [results] if isinstance(results, (str, Path)) else list(results)
    version = None
    if store_root:
        from intermix_core.publish import new_version

        version = new_version()  # taken before reading: a later version has seen at least these results
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
        from intermix_core.publish import publish_aggregation

        # one atomic version; the newest wins, and only it goes on to update the MLflow summary run
        publish_aggregation(_storage(store_root), grid_id, out_dir, version, tracking_uri)
    elif tracking_uri:
        from intermix_core.tracking import log_summary_to_mlflow

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


def prepare_shared_step(source: str, dataset: str, sample_rate: int, store_root: str, progress: bool = False,
                        on_silent: str = "keep") -> tuple[str, Any]:
    """Prepare `dataset` once into the store, keyed by dataset, sample rate, source fingerprint and format; (URI, Manifest)."""
    from intermix_core.shared_data import publish_prepared

    return publish_prepared(source, dataset, sample_rate, store_root, progress=progress, on_silent=on_silent)


def prepared_data(data_uri: str, cache_dir: str | None = None, max_cache_bytes: int | None = None) -> Any:
    """Context manager: a local folder with the prepared dataset at data_uri (via the node's cache_dir when given)."""
    from intermix_core.shared_data import cached_prepared

    return cached_prepared(data_uri, cache_dir, max_cache_bytes)
