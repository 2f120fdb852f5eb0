"""The state of a grid, fold by fold (done, running, killed, failed, stopped, superseded, not started), and how to rerun a fold.

Read from what a grid leaves behind, never written: each fold's `result.json` and checkpoint in the
store, and its MLflow fold runs (status, tags, the newest epoch metric's step and time as the
heartbeat). `fold_state` is the one place that turns these into a state; `grid_status` gathers them,
measures seconds per epoch and samples per second, and estimates the training time left.
"""

from __future__ import annotations

import contextlib
import shlex
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType
from tqdm import tqdm

from intermix_core.common.redact import redact_uris
from intermix_core.common.text import duration
from intermix_core.config.grid import FoldCell, GridSpec, expand, grid_id
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, fold_label, load_result
from intermix_core.results.statistics import first_line
from intermix_core.store.layout import cell_prefix
from intermix_core.store.storage import open_storage
from intermix_core.tracking.client import EXPERIMENT, one_attempt, reason, schema_lock, server_clock_offset
from intermix_core.tracking.tags import (
    DATASET, ERROR, FOLD, GRID, HEARTBEAT, KIND, LAST_EPOCH, SETUP, STALE_AFTER, STRATEGY, SUPERSEDED,
)

STATES = ("done", "running", "killed", "failed", "stopped", "superseded", "not started")
HEARTBEAT_METRIC = "train_loss"  # logged at every epoch (step = epoch): its newest point is the heartbeat
MLFLOW_TIMEOUT = 10  # seconds one MLflow request of `status` may take (one attempt: status never hangs)


def rerun_command(grid_id: str, dataset: str, setup: str, strategy: str, fold: int, store_root: str | None = None) -> str:
    """The `intermix rerun` command line that trains one fold of a grid again (resuming from its stored checkpoint).

    A local store `<workdir>/store` becomes `--workdir <workdir>` (its MLflow is there too); any other
    store is given as `--store`. On Kubeflow, add `--host` (and `--cluster-options`).
    """
    words = ["intermix", "rerun", grid_id, "--dataset", dataset, "--setup", setup, "--strategy", strategy,
             "--fold", str(fold)]
    if store_root:
        if "://" not in store_root and PurePath(store_root).name == "store":
            words += ["--workdir", str(PurePath(store_root).parent)]
        else:
            words += ["--store", store_root]
    return " ".join(shlex.quote(w) for w in words)


@dataclass
class RunView:
    """One MLflow attempt at a fold, as much of it as `status` needs."""

    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    superseded: bool
    error: str | None = None
    started: float | None = None  # unix seconds
    epoch: int | None = None  # the newest epoch with metrics
    heartbeat: float | None = None  # unix seconds of that epoch's metric
    seconds_per_epoch: float | None = None  # over this attempt's last epochs
    loss: float | None = None  # that epoch's training loss


@dataclass
class FoldView:
    """Everything known about one fold: its result and checkpoint in the store, its MLflow attempts (oldest first)."""

    result: FoldResult | None = None
    checkpoint: bool = False
    runs: list[RunView] = field(default_factory=list)


def fold_state(view: FoldView, now: float | None = None) -> tuple[str, str | None]:
    """(state, failure message) of one fold from what the store and MLflow hold.

    running: its current (not superseded) MLflow attempt is RUNNING with a heartbeat in the last
    STALE_AFTER seconds; killed: RUNNING without one (SIGKILL, a lost node: nothing could end the run;
    rerun resumes it); done: an ok result in the store;
    failed: a failed result, or a current attempt that ended FAILED without an ok result; stopped: a
    checkpoint without a result and no attempt running (interrupted: `rerun` resumes it); superseded:
    only attempts that later ones replaced, nothing else; not started: nothing at all.
    """
    current = [r for r in view.runs if not r.superseded]
    latest = current[-1] if current else None
    result = view.result
    if latest is not None and latest.status == "RUNNING":
        beat = latest.heartbeat or latest.started
        age = (time.time() if now is None else now) - beat if beat else None
        if age is not None and age > STALE_AFTER:
            return "killed", f"its MLflow run has been RUNNING with no heartbeat for {duration(age)} (the process is gone)"
        return "running", None
    if result is not None and result.status == "ok" and result.test_error is not None:
        return "done", None
    if result is not None and result.status == "failed":
        return "failed", first_line(result.error)
    if latest is not None and latest.status == "KILLED" and view.checkpoint:  # a signal stopped it after a checkpoint
        return "stopped", first_line(latest.error or "interrupted")
    if latest is not None and latest.status in ("FAILED", "KILLED"):
        return "failed", first_line(latest.error or f"MLflow run {latest.status.lower()}")
    if latest is not None and latest.status == "FINISHED":  # MLflow says done, the store does not hold it
        return "failed", "its MLflow run is FINISHED, but the store holds no result for it (not stored, or removed)"
    if view.checkpoint:
        return "stopped", None
    if view.runs and latest is None:
        return "superseded", None
    return "not started", None


@dataclass
class FoldStatus:
    """One fold's line of `intermix status`."""

    dataset: str
    setup: str
    strategy: str
    fold: int
    state: str
    epochs: int  # the fold's planned epochs
    epoch: int | None = None  # the newest epoch trained (running, stopped) or the last (done)
    test_error: float | None = None
    fgsm: bool = False
    error: str | None = None
    heartbeat: float | None = None
    started: float | None = None  # when the current attempt's MLflow run began (unix seconds)
    seconds_per_epoch: float | None = None
    samples_per_s: float | None = None
    loss: float | None = None  # the newest epoch's training loss (running)
    superseded: int = 0  # earlier attempts replaced by later ones
    checkpoint: bool = False  # the store holds a checkpoint of the fold (a rerun resumes from it)
    run_id: str | None = None
    rerun: str | None = None
    seconds_left: float | None = None

    @property
    def label(self) -> str:
        """'esc10/m18/bc/fold2'."""
        return fold_label(self.dataset, self.setup, self.strategy, self.fold)


@dataclass
class GridStatus:
    """Every fold of a grid with its state, what could not be read, and the training time left."""

    grid_id: str
    folds: list[FoldStatus]
    tracking: str  # where MLflow was read, or why not
    notes: list[str] = field(default_factory=list)
    kfp_runs: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many folds are in each state (states with none left out)."""
        return {s: n for s in STATES if (n := sum(f.state == s for f in self.folds))}

    def seconds_left(self) -> tuple[float | None, int]:
        """(seconds of training left summed over unfinished folds with a measured rate, folds without one)."""
        todo = [f for f in self.folds if f.state != "done"]
        known = [f.seconds_left for f in todo if f.seconds_left is not None]
        return (sum(known) if known else None), len(todo) - len(known)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for `--json`."""
        left, unmeasured = self.seconds_left()
        return {"grid_id": self.grid_id, "tracking": self.tracking, "counts": self.counts(),
                "seconds_left": left, "folds_without_rate": unmeasured, "notes": self.notes,
                "kfp_runs": self.kfp_runs, "folds": [asdict(f) | {"label": f.label} for f in self.folds]}


def _store_views(store_root: str, gid: str, keys: list[tuple[str, str, str, int]],
                 progress: bool = False) -> dict[tuple, FoldView]:
    """Each fold's result and checkpoint as the store holds them (a bar on stderr with `progress`)."""
    storage = open_storage(store_root)
    present = set(storage.list(gid))
    views: dict[tuple, FoldView] = {}
    with tempfile.TemporaryDirectory(prefix="intermix-status-") as tmp:
        for i, key in enumerate(tqdm(keys, desc="reading fold results", unit="fold", disable=not progress,
                                     leave=False)):
            prefix = cell_prefix(gid, *key)
            view = FoldView(checkpoint=f"{prefix}/{CHECKPOINT}" in present)
            if f"{prefix}/{RESULT}" in present:
                with contextlib.suppress(Exception):  # a damaged or half-written result reads as no result
                    view.result = load_result(storage.download_file(f"{prefix}/{RESULT}", Path(tmp) / f"{i}.json"))
            views[key] = view
    return views


def _heartbeat(client: MlflowClient, run: RunView) -> None:
    """The run's newest epoch metric (step, time) and its seconds per epoch over the last few epochs."""
    history = sorted(client.get_metric_history(run.run_id, HEARTBEAT_METRIC), key=lambda m: m.step)
    if not history:
        return
    run.epoch, run.heartbeat, run.loss = history[-1].step, history[-1].timestamp / 1000, history[-1].value
    recent = history[-6:]
    steps, span = recent[-1].step - recent[0].step, (recent[-1].timestamp - recent[0].timestamp) / 1000
    if steps > 0 and span > 0:
        run.seconds_per_epoch = span / steps
    elif run.started and run.epoch and run.heartbeat > run.started and len(history) == run.epoch:
        run.seconds_per_epoch = (run.heartbeat - run.started) / run.epoch  # a fresh attempt's first epochs


def _mlflow_views(tracking_uri: str, gid: str) -> dict[tuple, list[RunView]]:
    """MLflow attempts of every fold of the grid, oldest first, with heartbeats for the running ones."""
    with one_attempt(MLFLOW_TIMEOUT):
        with schema_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return {}
        runs, token = [], None
        while True:
            page = client.search_runs([experiment.experiment_id], f"tags.`{GRID}` = '{gid}' and tags.`{KIND}` = 'fold'",
                                      ViewType.ACTIVE_ONLY, max_results=1000, order_by=["attributes.start_time ASC"],
                                      page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        out: dict[tuple, list[RunView]] = {}
        for r in runs:
            tags = r.data.tags
            try:
                key = (tags[DATASET], tags[SETUP], tags[STRATEGY], int(tags[FOLD]))
            except (KeyError, ValueError):
                continue
            view = RunView(r.info.run_id, r.info.status, tags.get(SUPERSEDED) == "true", tags.get(ERROR),
                           (r.info.start_time or 0) / 1000 or None)
            if view.status == "RUNNING" and not view.superseded:
                _heartbeat(client, view)
                beat = tags.get(HEARTBEAT, "")  # refreshed every minute and at every checkpoint by the attempt
                if beat.isdigit():
                    view.heartbeat = max(view.heartbeat or 0.0, int(beat) / 1000)
                last = tags.get(LAST_EPOCH, "")
                if last.isdigit() and int(last) > (view.epoch or 0):
                    view.epoch = int(last)
            out.setdefault(key, []).append(view)
        return out


def _tracking_views(tracking_uri: str | None, gid: str) -> tuple[dict[tuple, list[RunView]], str, float]:
    """(attempts per fold, a line saying where MLflow was read or why not, the server's clock minus this machine's).

    Heartbeats are on the MLflow server's clock (the trainer corrects its own): read against the
    server's clock too, a trainer or reader whose clock is off is not called killed.
    """
    if not tracking_uri:
        return {}, "no MLflow given: states from the store only (running folds show as stopped or not started)", 0.0
    shown = redact_uris(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return {}, f"no MLflow store at {shown}: states from the store only", 0.0
    try:
        runs = _mlflow_views(tracking_uri, gid)
    except Exception as err:  # noqa: BLE001 - an unreachable MLflow leaves the store's view, said plainly
        return {}, f"MLflow at {shown} not readable ({reason(err)}): states from the store only", 0.0
    return runs, f"MLflow {shown}", server_clock_offset(tracking_uri, timeout=MLFLOW_TIMEOUT) or 0.0


def _samples_per_epoch(result: FoldResult | None) -> float | None:
    """Training samples per epoch as a finished fold measured them (samples/s x training seconds / epochs)."""
    if result is None or not result.samples_per_second or not result.train_seconds or not result.history:
        return None
    return result.samples_per_second * result.train_seconds / len(result.history)


def grid_status(grid: GridSpec, store_root: str, tracking_uri: str | None = None, now: float | None = None,
                progress: bool = False, cells: list[FoldCell] | None = None) -> GridStatus:
    """The state of every fold of `grid` (or of `cells` alone) from its store and MLflow, with rates and time left."""
    gid = grid_id(grid)
    now = time.time() if now is None else now
    cells = expand(grid) if cells is None else cells
    keys = [c.key for c in cells]
    views = _store_views(store_root, gid, keys, progress)
    runs, tracking, offset = _tracking_views(tracking_uri, gid)
    folds: list[FoldStatus] = []
    for cell in cells:
        view = views[cell.key]
        view.runs = runs.get(cell.key, [])
        state, error = fold_state(view, now + offset)  # on the server's clock, as the heartbeats are
        epochs = int(cell.config.resolved_optim().epochs or 0)
        current = next((r for r in reversed(view.runs) if not r.superseded), None)
        f = FoldStatus(*cell.key, state=state, epochs=epochs, error=error, checkpoint=view.checkpoint,
                       superseded=sum(r.superseded for r in view.runs), run_id=current.run_id if current else None)
        result = view.result
        if state == "done" and result is not None:
            f.test_error, f.fgsm, f.epoch = result.test_error, bool(result.fgsm), len(result.history) or epochs
            f.samples_per_s = result.samples_per_second
            if result.train_seconds and result.history:
                f.seconds_per_epoch = result.train_seconds / len(result.history)
        elif state == "running" and current is not None:  # times back on this machine's clock, for "… ago"
            f.epoch, f.seconds_per_epoch, f.loss = current.epoch, current.seconds_per_epoch, current.loss
            f.heartbeat = current.heartbeat - offset if current.heartbeat else None
            f.started = current.started - offset if current.started else None
        if state in ("failed", "stopped", "killed"):
            f.rerun = rerun_command(gid, *cell.key, store_root)
        folds.append(f)
    _rates_and_time_left(folds, {c.key: views[c.key].result for c in cells})
    return GridStatus(gid, folds, tracking, _store_notes(store_root, gid, views))


def _store_notes(store_root: str, gid: str, views: dict[tuple, FoldView]) -> list[str]:
    """A line when the store holds nothing of the grid (a mistyped --store lists every fold as 'not started')."""
    if any(v.result is not None or v.checkpoint for v in views.values()):
        return []
    where = open_storage(store_root).uri(gid)
    if "://" not in store_root and not Path(store_root).expanduser().is_dir():
        return [f"the store {store_root} does not exist: every fold reads as not started (is --store or --workdir "
                "right?)"]
    return [f"the store holds nothing of grid {gid} at {where}: nothing was trained or stored there yet (is --store "
            "or --workdir right?)"]


def _rates_and_time_left(folds: list[FoldStatus], results: dict[tuple, FoldResult | None]) -> None:
    """Fill samples/s of running folds and the seconds left of every unfinished fold, from measured rates only.

    Seconds per epoch: the fold's own (running), else the median over folds of the same cell, else of the
    same dataset x setup (strategies cost about the same per epoch); a fold with none keeps None.
    """
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    per_cell: dict[tuple, list[float]] = {}
    per_setup: dict[tuple, list[float]] = {}
    samples: dict[tuple, list[float]] = {}  # per cell, and per dataset x setup (the same training clips per epoch)
    for f in folds:
        if f.seconds_per_epoch:
            per_cell.setdefault((f.dataset, f.setup, f.strategy), []).append(f.seconds_per_epoch)
            per_setup.setdefault((f.dataset, f.setup), []).append(f.seconds_per_epoch)
        spe = _samples_per_epoch(results.get((f.dataset, f.setup, f.strategy, f.fold)))
        if spe:
            samples.setdefault((f.dataset, f.setup, f.strategy), []).append(spe)
            samples.setdefault((f.dataset, f.setup), []).append(spe)
    for f in folds:
        cell = (f.dataset, f.setup, f.strategy)
        rate = f.seconds_per_epoch or median(per_cell.get(cell, [])) or median(per_setup.get((f.dataset, f.setup), []))
        per_epoch = median(samples.get(cell, [])) or median(samples.get((f.dataset, f.setup), []))
        if f.state == "running" and f.seconds_per_epoch and per_epoch:
            f.samples_per_s = per_epoch / f.seconds_per_epoch
        if f.state != "done" and rate:
            done_epochs = f.epoch if f.state == "running" and f.epoch else 0
            f.seconds_left = max(0, f.epochs - done_epochs) * rate


def _ago(seconds: float) -> str:
    return f"{duration(seconds)} ago"


def describe_fold(f: FoldStatus, now: float) -> str:
    """The state column of one fold, e.g. 'running: epoch 12 of 40, last heartbeat 8 s ago, 31.5 samples/s'."""
    if f.state == "done":
        text = f"done: {f.test_error:.1f} % error" + ("" if f.fgsm else ", FGSM pending")
    elif f.state == "running":
        parts = [f"epoch {f.epoch} of {f.epochs}" if f.epoch is not None else f"no epoch logged yet (of {f.epochs})"]
        if f.heartbeat:
            parts.append(f"last heartbeat {_ago(max(0.0, now - f.heartbeat))}")
        elif f.started:
            parts.append(f"started {_ago(max(0.0, now - f.started))}")
        if f.samples_per_s:
            parts.append(f"{f.samples_per_s:.1f} samples/s")
        elif f.seconds_per_epoch:
            parts.append(f"{f.seconds_per_epoch:.1f} s/epoch")
        text = "running: " + ", ".join(parts)
    elif f.state == "failed":
        text = f"failed: {f.error}"
    elif f.state == "killed":
        text = f"killed: {f.error}; " + ("rerun resumes it from its stored checkpoint" if f.checkpoint else
                                          "no checkpoint reached the store: rerun trains it from its first epoch")
    elif f.state == "stopped":
        text = "stopped: a checkpoint in the store, no result, nothing running (rerun resumes it)"
    else:
        text = f.state
    more = f" (+{f.superseded} superseded attempt{'s' if f.superseded > 1 else ''})"
    return text + (more if f.superseded and f.state != "superseded" else "")


def format_status(status: GridStatus, now: float | None = None) -> str:
    """`intermix status` as plain text: one line per fold, the counts, the time left, the rerun commands."""
    now = time.time() if now is None else now
    width = max((len(f.label) for f in status.folds), default=10)
    lines = [f"grid {status.grid_id}: {len(status.folds)} folds; {status.tracking}"]
    lines += [f"  {f.label:<{width}}  {describe_fold(f, now)}" for f in status.folds]
    lines.append(", ".join(f"{n} {s}" for s, n in status.counts().items()))
    left, unmeasured = status.seconds_left()
    todo = sum(f.state != "done" for f in status.folds)
    if todo:
        if left is None:
            lines.append(f"time left: unknown (no fold of these cells has a measured rate yet; {todo} to train)")
        else:
            lines.append(f"time left: about {duration(left)} of training for {todo - unmeasured} fold(s) at the rates"
                         " measured so far, one fold at a time (folds that run at once finish sooner)"
                         + (f"; {unmeasured} fold(s) without a measured rate are not counted" if unmeasured else ""))
    if status.kfp_runs:
        lines.append("Kubeflow runs:")
        lines += [f"  {r['name']}  {r['state']}  {r['run_id']}" for r in status.kfp_runs]
    failed = [f for f in status.folds if f.rerun]
    if failed:
        lines.append("rerun the failed, killed and stopped folds (add --host URL to run on Kubeflow):")
        lines += [f"  {f.rerun}" for f in failed]
    lines += [f"note: {n}" for n in status.notes]
    return "\n".join(lines)


def kfp_run_states(runs: dict[str, Any]) -> list[dict[str, str]]:
    """KFP runs (display name -> run, as `pipelines.submit.existing_runs` returns them) as name/state/id rows."""
    return [{"name": name, "state": str(getattr(r, "state", "") or "UNKNOWN").upper(), "run_id": str(r.run_id)}
            for name, r in sorted(runs.items())]
