"""MLflow tracking of a grid: one parent run per (grid, dataset, setup, strategy), a nested run per fold.

Parents carry `<metric>_mean`, `<metric>_se` and `n_folds` over their folds' current results, so the
MLflow runs table compares strategies directly. See docs/tracking.md for tags and supersession.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from intermix_core.common.names import check_name
from intermix_core.common.provenance import git_commit
from intermix_core.common.redact import has_credentials, redact_uris
from intermix_core.common.text import cut, duration
from intermix_core.config import ExperimentConfig
from intermix_core.method.train import FoldTakenOver
from intermix_core.records import EpochRecord, FoldResult, fold_label
from intermix_core.results.plots import plot_confusion
from intermix_core.results.statistics import mean_se
from intermix_core.tracking.client import (
    DEFAULT_PATIENCE,
    EPOCH_RETRY,
    EPOCH_TIMEOUT,
    EXPERIMENT,
    PATIENCE_ENV,
    QUIET,
    QUIETED,
    PatientClient,
    TrackingError,
    default_tracking_uri,
    ensure_experiment,
    one_attempt,
    quiet_run_links,
    reason,
    schema_lock,
    server_clock_offset,
    warn,
)
from intermix_core.tracking.tags import (
    ATTEMPT,
    ATTEMPT_STARTED,
    DATASET,
    EPOCH_METRICS,
    ERROR,
    FGSM_CROP_PREFIX,
    FGSM_PREFIX,
    FOLD,
    GRID,
    HEARTBEAT,
    HEARTBEAT_EVERY,
    KIND,
    LAST_EPOCH,
    PARENT_ID,
    SETUP,
    STALE_AFTER,
    STRATEGY,
    SUPERSEDED,
    SUPERSEDED_BY,
    TAG_MAX,
    T,
)


def _seconds_from_env(name: str, default: float) -> float:
    """A number of seconds (>= 0, finite) from the environment variable `name`, else `default`; ValueError naming it."""
    value = os.environ.get(name) or str(default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{name}={cut(value, 40)}: expected a number of seconds, e.g. {default:g}")
    return seconds


SYNC_EVERY = 5.0  # seconds between the background thread's takeover checks and sends of epoch metrics
SYNC_ENV = "INTERMIX_MLFLOW_SYNC_SECONDS"  # overrides SYNC_EVERY; 0: synchronously at every epoch


class FoldSuperseded(FoldTakenOver):
    """Another attempt at the same fold took over this attempt's MLflow run: this one stops (one line)."""


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"tracking identifiers cannot contain a single quote: {value!r}")
    return f"'{value}'"


def _cell_filter(grid_id: str, dataset: str, setup: str, strategy: str, kind: str, fold: int | None = None) -> str:
    parts = [(GRID, grid_id), (DATASET, dataset), (SETUP, setup), (STRATEGY, strategy), (KIND, kind)]
    if fold is not None:
        parts.append((FOLD, str(fold)))
    return " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in parts)


def _params(cfg: ExperimentConfig, fold: int | None = None) -> dict[str, str]:
    """MLflow params of a run: cfg.flat() (plus `fold`), values cut to MLflow's 6000 characters."""
    params = {**cfg.flat(), **({"fold": str(fold)} if fold is not None else {})}
    return {k: v[:6000] for k, v in params.items()}


class Tracker:
    """Logs folds of a grid to MLflow; `tracking_uri` None means $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db.

    `patience` (default $INTERMIX_MLFLOW_PATIENCE, else 300 s): how long a call other than per-epoch
    logging retries an unreachable MLflow before raising TrackingError.

    `sync_every` (default SYNC_EVERY, 5 s): epoch metrics are buffered and a background thread, every
    `sync_every` seconds, checks that each fold run this attempt holds is still its own (takeover) and
    sends its buffered metrics in one batch: the training loop never waits for MLflow, except at
    `flush` (checkpoints) and `finish_fold`. 0 does both synchronously at every epoch instead.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT,
                 patience: float | None = None, sync_every: float | None = None) -> None:
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        self.patience = _seconds_from_env(PATIENCE_ENV, DEFAULT_PATIENCE) if patience is None else patience
        quiet_run_links(self.tracking_uri)
        with schema_lock(self.tracking_uri):  # opening a sqlite store creates or upgrades its schema
            self._mlflow = MlflowClient(tracking_uri=self.tracking_uri)
            self.client = PatientClient(self._mlflow, self.tracking_uri, self.patience)
            self.experiment_id = self._experiment(experiment)
        self._last_step: dict[str, int] = {}  # the highest epoch MLflow holds, per run
        self._pending: dict[str, list[Metric]] = {}  # epoch metrics not yet sent, per run, oldest first
        self._pending_top: dict[str, int] = {}  # the highest epoch among them
        self._next_try = 0.0  # monotonic time before which per-epoch logging does not call MLflow
        self._failures = 0  # consecutive failed per-epoch attempts
        self._token = uuid.uuid4().hex  # this Tracker's attempt id (the ATTEMPT tag of the runs it holds)
        self.sync_every = _seconds_from_env(SYNC_ENV, SYNC_EVERY) if sync_every is None else float(sync_every)
        self._buffer_lock = threading.Lock()  # the buffers: held for list edits only, never across a request
        self._send_lock = threading.RLock()  # one sender at a time (the background thread or a flush)
        self._active: set[str] = set()  # fold runs this attempt holds and checks in the background
        self._superseded: dict[str, str] = {}  # run id -> why another attempt holds it (found in the background)
        self._stop = threading.Event()
        self._beats: dict[str, float] = {}  # monotonic time of each active run's last heartbeat
        self._thread: threading.Thread | None = None
        self._offset = server_clock_offset(self.tracking_uri) or 0.0  # heartbeats, attempt times: the server's clock

    def now(self) -> float:
        """Seconds since the epoch on the MLflow server's clock (this machine's, corrected by its measured offset)."""
        return time.time() + self._offset

    # -- experiment, search ---------------------------------------------------------------------
    def _experiment(self, name: str) -> str:
        return ensure_experiment(self.client, name)  # type: ignore[arg-type]  (a patient MlflowClient)

    def _search(self, filter_string: str) -> list[Run]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                           max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def find_parent(self, grid_id: str, dataset: str, setup: str, strategy: str) -> Run | None:
        """The parent run of a grid cell (the oldest if concurrent starts made several), or None."""
        runs = self._search(_cell_filter(grid_id, dataset, setup, strategy, "parent"))
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None

    def fold_runs(self, grid_id: str, dataset: str, setup: str, strategy: str, fold: int | None = None) -> list[Run]:
        """Every fold run of a grid cell (all attempts), oldest first."""
        return self._search(_cell_filter(grid_id, dataset, setup, strategy, "fold", fold))

    def _parent_for(self, cfg: ExperimentConfig, grid_id: str, tags: dict[str, str]) -> str:
        cell = (grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name)
        parent = self.find_parent(*cell)
        if parent is not None:
            if parent.info.status != "RUNNING":
                self.client.update_run(parent.info.run_id, status="RUNNING")
            return parent.info.run_id
        run = self.client.create_run(
            self.experiment_id, run_name="/".join(cell[1:]),
            tags={**tags, GRID: grid_id, DATASET: cfg.dataset, SETUP: cfg.setup_name, STRATEGY: cfg.strategy.name,
                  T + "model": cfg.model, KIND: "parent"},
        )
        winner = self.find_parent(*cell)  # two folds starting at once: everyone keeps the oldest parent
        if winner is not None and winner.info.run_id != run.info.run_id:
            self.client.delete_run(run.info.run_id)
            return winner.info.run_id
        self._log_params(run.info.run_id, _params(cfg))
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100], synchronous=True)

    # -- the fold lifecycle ---------------------------------------------------------------------
    def start_fold(
        self, cfg: ExperimentConfig, fold: int, grid_id: str, tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> str:
        """Find or create the cell's parent, create (or reopen `resume_run_id`) the nested fold run; returns its id."""
        cfg = cfg.resolved()
        check_name(grid_id, "grid id")  # it goes into MLflow names and search filters
        cell = (grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name)
        run_id = self._reopen(resume_run_id, cfg, fold, grid_id) if resume_run_id else None
        if run_id is None:
            parent_id = self._parent_for(cfg, grid_id, dict(tags or {}))
            fold_tags = {
                **(tags or {}), PARENT_ID: parent_id, GRID: grid_id, DATASET: cfg.dataset, SETUP: cfg.setup_name,
                STRATEGY: cfg.strategy.name, T + "model": cfg.model, FOLD: str(fold), KIND: "fold", SUPERSEDED: "false",
                ATTEMPT_STARTED: str(int(self.now() * 1000)), ATTEMPT: self._token,
                HEARTBEAT: str(int(self.now() * 1000)),
            }
            for tag, value in ((T + "git_commit", git_commit()), (T + "image", os.environ.get("INTERMIX_IMAGE")),
                               (T + "kfp_run_id", os.environ.get("KFP_RUN_ID"))):
                if value:
                    fold_tags[tag] = value
            if fold_tags.get(T + "git_commit"):
                fold_tags["mlflow.source.git.commit"] = fold_tags[T + "git_commit"]
            name = fold_label(*cell[1:], fold)
            run = self.client.create_run(self.experiment_id, run_name=name, tags=fold_tags)
            run_id = run.info.run_id
            self._log_params(run_id, _params(cfg, fold))
            self.client.log_dict(run_id, cfg.model_dump(mode="json"), "config.json")
            self._last_step[run_id] = -1
        if self._supersede_others(run_id, cell, fold):
            self.update_parent(*cell)
        self._start_background(run_id)
        return run_id

    def _reopen(self, run_id: str, cfg: ExperimentConfig, fold: int, grid_id: str) -> str | None:
        """Reopen an earlier run of this fold (None if it no longer exists); refuse a run of another cell."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage != "active":
            return None
        want = {GRID: grid_id, DATASET: cfg.dataset, SETUP: cfg.setup_name, STRATEGY: cfg.strategy.name,
                FOLD: str(fold), KIND: "fold"}
        got = {k: run.data.tags.get(k) for k in want}
        if got != want:
            raise ValueError(f"resume_run_id {run_id} is not a run of this fold: expected tags {want}, found {got}")
        expected = _params(cfg, fold)
        if not run.data.params:  # created, then interrupted before its parameters were logged
            self._log_params(run_id, expected)
            self.client.log_dict(run_id, cfg.model_dump(mode="json"), "config.json")
        elif run.data.params != expected:
            diff = sorted(k for k in expected.keys() | run.data.params.keys()
                          if expected.get(k) != run.data.params.get(k))
            raise ValueError(f"resume_run_id {run_id} was logged with another configuration (differs in: {diff})")
        parent_id = run.data.tags.get(PARENT_ID)
        if parent_id:
            self.client.update_run(parent_id, status="RUNNING")
        self.client.update_run(run_id, status="RUNNING")
        now = str(int(self.now() * 1000))
        self.client.log_batch(run_id, tags=[RunTag(SUPERSEDED, "false"), RunTag(ATTEMPT, self._token),
                                            RunTag(ATTEMPT_STARTED, now), RunTag(HEARTBEAT, now)])
        self._last_step.pop(run_id, None)
        self._last_logged_step(run_id)  # read now, while MLflow answers: epochs replayed after a resume are skipped
        return run_id

    def _supersede_others(self, run_id: str, cell: tuple[str, str, str, str], fold: int) -> bool:
        """Tag the attempts of this fold that began before this one superseded (kill those still RUNNING).

        Only earlier ones: two attempts starting at once then agree that the later one is current.
        Returns True if any run changed.
        """
        runs = self.fold_runs(*cell, fold=fold)
        began = {r.info.run_id: (int(r.data.tags.get(ATTEMPT_STARTED) or r.info.start_time), r.info.run_id)
                 for r in runs}
        if run_id not in began:  # not searchable yet: read it directly
            me = self.client.get_run(run_id)
            began[run_id] = (int(me.data.tags.get(ATTEMPT_STARTED) or me.info.start_time), run_id)
        changed = False
        for run in runs:
            other = run.info.run_id
            if other == run_id or run.data.tags.get(SUPERSEDED) == "true" or began[other] > began[run_id]:
                continue
            self.client.log_batch(other, tags=[RunTag(SUPERSEDED, "true"), RunTag(SUPERSEDED_BY, run_id)])
            if run.info.status == "RUNNING":
                self.client.set_terminated(other, "KILLED")
            changed = True
        return changed

    def ensure_current(self, run_id: str, force: bool = False) -> None:
        """Raise FoldSuperseded if another attempt took this run over (superseded it, or reopened it).

        Costs nothing per epoch: the background thread looks every `sync_every` seconds, and this
        raises what it found. `force` (before every checkpoint) looks now, with one quick request.
        While MLflow is unreachable the attempt carries on (it cannot be told); during a known outage
        (epoch metrics waiting for their next try) no request is made.
        """
        if run_id in self._superseded:
            raise FoldSuperseded(self._superseded[run_id])
        if force or self.sync_every <= 0 or self._thread is None:
            self._check(run_id)

    def _check(self, run_id: str) -> None:
        """One quick look at the run's tags: FoldSuperseded (remembered for this run) if it is no longer ours."""
        if time.monotonic() < self._next_try:
            return
        try:
            with one_attempt(EPOCH_TIMEOUT):
                tags = self._mlflow.get_run(run_id).data.tags
        except Exception:  # noqa: BLE001 - an outage must not stop training
            return
        holder, why = tags.get(ATTEMPT), None
        if tags.get(SUPERSEDED) == "true":
            why = (f"MLflow run {run_id} was superseded by run {tags.get(SUPERSEDED_BY)} (a later attempt at this fold); "
                   "this attempt stops")
        elif holder and holder != self._token:
            why = (f"MLflow run {run_id} was reopened by another attempt at this fold (attempt {holder[:8]}, resuming "
                   "from the stored checkpoint); this attempt stops")
        if why is not None:
            with self._buffer_lock:  # what it has not sent yet belongs to an attempt that lost the fold
                self._superseded[run_id] = why
                self._active.discard(run_id)
                self._pending.pop(run_id, None)
            raise FoldSuperseded(why)

    # -- the background thread: takeover checks and epoch metrics, every sync_every seconds ------------
    def _start_background(self, run_id: str) -> None:
        """Check and sync `run_id` in the background from now on (the thread starts with the first run)."""
        with self._buffer_lock:
            self._active.add(run_id)
        if self.sync_every > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._background, name="mlflow-sync", daemon=True)
            self._thread.start()

    def _background(self) -> None:
        while not self._stop.wait(self.sync_every):
            for run_id in sorted(self._active):
                try:
                    self._check(run_id)
                    self._send_pending(run_id)
                    if time.monotonic() - self._beats.get(run_id, 0.0) >= HEARTBEAT_EVERY:
                        self.heartbeat(run_id)
                except FoldSuperseded:
                    continue  # remembered: the training loop raises it at its next epoch
                except Exception as err:  # noqa: BLE001 - the thread must outlive anything MLflow does
                    warn(f"warning: MLflow sync of run {run_id} failed ({reason(err)}); trying again later")

    def heartbeat(self, run_id: str) -> None:
        """Tag the run as alive now (one quick request; skipped during a known outage, never raises)."""
        if time.monotonic() < self._next_try:
            return
        try:
            offset = server_clock_offset(self.tracking_uri)  # measured again with every heartbeat: clocks drift
            self._offset = self._offset if offset is None else offset
            tags = [RunTag(HEARTBEAT, str(int(self.now() * 1000)))]
            if self._last_step.get(run_id, -1) > 0:
                tags.append(RunTag(LAST_EPOCH, str(self._last_step[run_id])))
            with one_attempt(EPOCH_TIMEOUT):
                self._mlflow.log_batch(run_id, tags=tags, synchronous=True)
            self._beats[run_id] = time.monotonic()
        except Exception:  # noqa: BLE001 - a missed heartbeat is made up by the next one
            pass

    def close(self) -> None:
        """Stop the background thread (what it has not sent stays buffered for `flush` or `finish_fold`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * EPOCH_TIMEOUT)

    def _last_logged_step(self, run_id: str) -> int:
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "train_loss")
            self._last_step[run_id] = max((m.step for m in history), default=-1)
        return self._last_step[run_id]

    # -- epoch metrics: best effort, buffered through outages -------------------------------------
    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        """Log train_loss, train_error, val_error (if set) and lr at step=epoch; epochs already logged are skipped.

        Returns at once: the metrics wait in a buffer for the background thread (every `sync_every`
        seconds), `flush()` or `finish_fold`, and go out exactly once, also across an MLflow outage
        (with a warning). With `sync_every` 0 they are sent now (one quick attempt).
        """
        if record.epoch <= max(self._last_logged_step(run_id), self._pending_top.get(run_id, -1)):
            return
        now = int(self.now() * 1000)  # kept with the metric: a resend is then identical, and MLflow keeps one copy
        metrics = [Metric(k, float(v), now, record.epoch) for k in EPOCH_METRICS if (v := getattr(record, k)) is not None]
        with self._buffer_lock:
            if run_id in self._superseded:
                return
            self._pending.setdefault(run_id, []).extend(metrics)
            self._pending_top[run_id] = record.epoch
        if (self.sync_every <= 0 or run_id not in self._active) and time.monotonic() >= self._next_try:
            self._send_pending(run_id)  # synchronous mode, or a run the background thread does not hold

    def flush(self, run_id: str | None = None) -> bool:
        """Try once now to send buffered epoch metrics (of `run_id`, or of every run); True if none are left.

        Training calls it after every checkpoint: the run's heartbeat is refreshed with it.
        """
        for rid in [run_id] if run_id else list(self._pending):
            self._send_pending(rid)
        if run_id and run_id in self._active:
            self.heartbeat(run_id)
        return not any(self._pending.get(rid) for rid in ([run_id] if run_id else list(self._pending)))

    def pending_epochs(self, run_id: str) -> list[int]:
        """Epochs of `run_id` whose metrics are buffered, not yet in MLflow."""
        with self._buffer_lock:
            return sorted({m.step for m in self._pending.get(run_id, [])})

    def _send_pending(self, run_id: str, patient: bool = False) -> None:
        """Send `run_id`'s buffered metrics: one quick attempt (a warning if it fails), or patiently (may raise).

        One sender at a time; the buffer lock is held only to take a chunk and to drop it once sent, so
        the training thread can buffer the next epochs while a request is on the way.
        """
        send = functools.partial(self._mlflow.log_batch, run_id, synchronous=True)
        with self._send_lock:
            with self._buffer_lock:
                if not self._pending.get(run_id):
                    return
            try:
                while True:
                    with self._buffer_lock:
                        chunk = list(self._pending.get(run_id, [])[:1000])  # log_batch takes at most 1000 metrics
                    if not chunk:
                        break
                    if patient:
                        self.client.call(send, metrics=chunk)
                    else:
                        with one_attempt(EPOCH_TIMEOUT):
                            send(metrics=chunk)
                    with self._buffer_lock:
                        self._last_step[run_id] = max(self._last_step.get(run_id, -1), max(m.step for m in chunk))
                        del self._pending[run_id][: len(chunk)]  # only this sender removes; the training thread appends
            except Exception as err:  # noqa: BLE001 - epoch logging must not stop training
                if patient:
                    raise
                self._failures += 1
                wait = min(EPOCH_RETRY[0] * 2 ** (self._failures - 1), EPOCH_RETRY[1])
                self._next_try = time.monotonic() + wait
                epochs = self.pending_epochs(run_id)
                span = f" ({epochs[0]}..{epochs[-1]})" if epochs else ""
                warn(f"warning: MLflow at {redact_uris(self.tracking_uri)} unreachable ({reason(err)}); training goes "
                     f"on, metrics of {len(epochs)} epoch(s){span} kept to send later, next try in {wait:.0f} s")
                return
            if self._failures:
                warn(f"MLflow at {redact_uris(self.tracking_uri)} reachable again: buffered epoch metrics sent")
            self._failures, self._next_try = 0, 0.0

    def end_fold(self, run_id: str, status: str, reason: str) -> None:
        """End a fold run that did not finish: FAILED (an error) or KILLED (interrupted), the reason's first line as
        its `intermix.error` tag; what was buffered goes first; then the parent follows. Patient, like finish_fold."""
        if run_id in self._superseded:
            return  # another attempt holds the run: its end is that attempt's to log
        with contextlib.suppress(TrackingError):  # what is buffered is sent if MLflow answers; the end matters more
            self._send_pending(run_id, patient=True)
        line = (reason.strip().splitlines() or [status.lower()])[0]
        self.client.set_tag(run_id, ERROR, cut(line, TAG_MAX - 100))
        self.client.set_terminated(run_id, status)
        with self._buffer_lock:
            self._active.discard(run_id)
        self._refresh_parent_of(run_id)

    def log_fgsm(self, run_id: str, fgsm: dict[str, float], fgsm_crop: dict[str, float] | None = None) -> None:
        """Log `fgsm_error_eps_<eps>` (and `fgsm_crop_error_eps_<eps>`) per epsilon, then refresh the parent."""
        self._log_metrics(run_id, _fgsm_metrics(fgsm, fgsm_crop or {}))
        self._refresh_parent_of(run_id)

    def finish_fold(self, run_id: str, result: FoldResult) -> None:
        """Log final metrics and the confusion matrix, end the run (FINISHED or FAILED), update the parent.

        Buffered epoch metrics go first; if MLflow stays unreachable past `patience`, TrackingError
        (one line) and the run stays RUNNING: calling finish_fold again later logs what is missing.
        """
        try:
            self._finish_fold(run_id, result)
        except TrackingError as err:
            cell = result.label
            raise TrackingError(f"{err}; {cell} is trained but its MLflow run {run_id} is not finished: "
                                "run the same command again once MLflow answers to log it") from None
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise TrackingError(f"MLflow at {redact_uris(self.tracking_uri)} no longer has run {run_id} (restarted "
                                f"with an empty database?); {result.label} is trained and kept in its folder: run the "
                                "same command again to log it in a new run") from None

    def ensure_finished(self, run_id: str, result: FoldResult) -> None:
        """Finish a fold's run again if it is not FINISHED (ended FAILED when the trained fold could not be stored).

        A run another attempt superseded is left alone. Nothing is logged twice (finish_fold is idempotent).
        """
        run = self.client.get_run(run_id)
        if run.info.status != "FINISHED" and run.data.tags.get(SUPERSEDED) != "true":
            self.finish_fold(run_id, result)

    def _finish_fold(self, run_id: str, result: FoldResult) -> None:
        if run_id in self._superseded:  # another attempt holds the run: its end is that attempt's to log
            raise FoldSuperseded(self._superseded[run_id])
        run = self.client.get_run(run_id)
        tags = run.data.tags
        got = (tags.get(DATASET), tags.get(SETUP), tags.get(STRATEGY), tags.get(FOLD))
        want = (result.dataset, result.setup, result.strategy, str(result.fold))
        if got != want:
            raise ValueError(f"result for {want} does not belong to run {run_id} of {got}")
        for record in result.history:
            self.log_epoch(run_id, record)
        self._send_pending(run_id, patient=True)
        final = {"test_error": result.test_error, "train_seconds": result.train_seconds,
                 "samples_per_second": result.samples_per_second}
        if result.best_val_error is not None:
            final["best_val_error"] = result.best_val_error
        final.update(_fgsm_metrics(result.fgsm, result.fgsm_crop))
        # a value the run already holds is not logged again: finishing twice (after a failed end) adds nothing
        self._log_metrics(run_id, {k: v for k, v in final.items() if v is not None and run.data.metrics.get(k) != v})
        if result.confusion is not None:
            self._log_confusion(run_id, result.confusion, result.classes, result.label)
        if result.status == "failed":
            self.client.set_tag(run_id, ERROR, (result.error or "failed")[:TAG_MAX])
        elif ERROR in tags:  # what stopped an earlier attempt (a signal, a failed store write) no longer holds
            self.client.delete_tag(run_id, ERROR)
        self.client.set_terminated(run_id, "FAILED" if result.status == "failed" else "FINISHED")
        with self._buffer_lock:
            self._active.discard(run_id)  # ended: nothing more to check or send in the background
        self._print_link(run)
        self._refresh_parent_of(run_id)

    def _print_link(self, run: Run) -> None:
        """MLflow's "View run" line, with credentials removed, where quiet_run_links silenced MLflow's own."""
        if QUIETED and os.environ.get(QUIET) and has_credentials(self.tracking_uri) and \
                self.tracking_uri.startswith(("http://", "https://")):
            url = f"{self.tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            print(f"View run {run.info.run_name} at: {redact_uris(url)}", flush=True)

    def _log_metrics(self, run_id: str, values: dict[str, float], step: int = 0, timestamp: int | None = None) -> None:
        ts = timestamp or int(self.now() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)

    def _log_confusion(self, run_id: str, confusion: list[list[int]], classes: list[str | None] | None = None,
                       title: str | None = None) -> None:
        self.client.log_dict(run_id, {"rows": "true class", "cols": "predicted class", "matrix": confusion,
                                      "classes": classes}, "confusion.json")
        with tempfile.TemporaryDirectory() as tmp:
            self.client.log_artifact(run_id, str(plot_confusion(confusion, Path(tmp) / "confusion.png", classes, title)))

    def _refresh_parent_of(self, run_id: str) -> None:
        tags = self.client.get_run(run_id).data.tags
        cell = (tags.get(GRID), tags.get(DATASET), tags.get(SETUP), tags.get(STRATEGY))
        if all(cell):
            self.update_parent(*cell)  # type: ignore[arg-type]

    # -- parent statistics ---------------------------------------------------------------------
    def update_parent(self, grid_id: str, dataset: str, setup: str, strategy: str) -> dict[str, float]:
        """Mean, SE (ddof=1), n_folds over each fold's newest FINISHED non-superseded run; logged on the parent."""
        parent = self.find_parent(grid_id, dataset, setup, strategy)
        if parent is None:
            return {}
        seen_at = int(self.now() * 1000)  # a slower, staler update must not win over a newer one
        runs = self.fold_runs(grid_id, dataset, setup, strategy)
        current: dict[str, Run] = {}
        for run in runs:  # oldest first: the newest per fold wins
            if run.info.status == "FINISHED" and run.data.tags.get(SUPERSEDED) != "true":
                current[run.data.tags[FOLD]] = run
        stats = summarize(r.data.metrics for r in current.values())
        self._log_metrics(parent.info.run_id, stats, timestamp=seen_at)
        folds = sorted(current, key=int)
        self.client.set_tag(parent.info.run_id, T + "folds", ",".join(folds))
        status = parent_status(runs, self.now())
        if status != "RUNNING":
            self.client.set_terminated(parent.info.run_id, status)
        elif parent.info.status != "RUNNING":
            self.client.update_run(parent.info.run_id, status="RUNNING")
        return stats

    # -- the state of a grid's folds, for `intermix status`, results and the aggregate ------------------------
    def fold_states(self, grid_id: str) -> list["FoldState"]:
        """The newest current (not superseded) run of every fold of `grid_id` in this experiment, as FoldStates."""
        runs = self._search(f"tags.`{GRID}` = {_quote(check_name(grid_id, 'grid id'))} and tags.`{KIND}` = 'fold'")
        newest: dict[tuple[str, str, str, int], Run] = {}
        for run in runs:  # oldest first
            tags = run.data.tags
            if tags.get(SUPERSEDED) != "true" and tags.get(FOLD, "").isdigit():
                newest[(tags.get(DATASET, ""), tags.get(SETUP, ""), tags.get(STRATEGY, ""), int(tags[FOLD]))] = run
        return [FoldState.of(key, run, self.now()) for key, run in sorted(newest.items())]


def _heartbeat_seconds(run: Run) -> float:
    """When the run's attempt last showed it was alive (seconds since the epoch): its heartbeat, else its start."""
    tags = run.data.tags
    for value in (tags.get(HEARTBEAT), tags.get(ATTEMPT_STARTED), run.info.start_time):
        if value is not None and str(value).isdigit():
            return int(value) / 1000.0
    return 0.0


def is_stale(run: Run, now: float | None = None) -> bool:
    """True for a RUNNING run whose attempt has shown no sign of life for STALE_AFTER seconds (it was killed)."""
    return run.info.status == "RUNNING" and (now or time.time()) - _heartbeat_seconds(run) > STALE_AFTER


def parent_status(fold_runs: list[Run], now: float | None = None) -> str:
    """What a parent is while these are its folds' runs: RUNNING while one current fold runs (with a heartbeat),
    else FAILED if one ended so, else KILLED if one was interrupted or killed (a stale RUNNING one), else FINISHED."""
    current: dict[str, Run] = {}
    for run in fold_runs:  # oldest first: the newest attempt per fold counts
        if run.data.tags.get(SUPERSEDED) != "true":
            current[run.data.tags.get(FOLD, "")] = run
    states = {("STALE" if is_stale(r, now) else r.info.status) for r in current.values()}
    for status in ("RUNNING", "FAILED"):
        if status in states:
            return status
    return "KILLED" if states & {"KILLED", "STALE"} else "FINISHED"


@dataclass(frozen=True)
class FoldState:
    """What MLflow says of one fold: its newest current run's status, epoch and heartbeat."""

    dataset: str
    setup: str
    strategy: str
    fold: int
    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    stale: bool  # RUNNING without a heartbeat for STALE_AFTER seconds: its attempt was killed
    heartbeat: float  # seconds since the epoch
    epoch: int | None  # the last epoch whose metrics reached MLflow
    error: str | None  # the first line of why it failed or stopped

    @classmethod
    def of(cls, key: tuple[str, str, str, int], run: Run, now: float | None = None) -> "FoldState":
        """The state of fold `key` from its run; `now` on the clock its heartbeats are on (Tracker.now)."""
        now = time.time() if now is None else now
        return cls(*key, run_id=run.info.run_id, status=run.info.status, stale=is_stale(run, now),
                   heartbeat=_heartbeat_seconds(run) - now + time.time(),  # kept on this machine's clock
                   epoch=_last_epoch(run), error=run.data.tags.get(ERROR))

    def describe(self, now: float | None = None) -> str:
        """A few words: 'running (heartbeat 40 s ago)', 'killed? RUNNING with no heartbeat for 3 h', 'failed: ...'."""
        ago = duration((now or time.time()) - self.heartbeat)
        if self.stale:
            return f"killed? its MLflow run has been RUNNING with no heartbeat for {ago}"
        if self.status == "RUNNING":
            return f"running (heartbeat {ago} ago)"
        if self.status in ("FAILED", "KILLED"):
            return f"{self.status.lower()}: {self.error or 'no reason recorded'}"
        return self.status.lower()


def _last_epoch(run: Run) -> int | None:
    """The last epoch logged, from the run's `intermix.epoch` tag (refreshed with the heartbeat: no history request)."""
    value = run.data.tags.get(LAST_EPOCH)
    return int(value) if value and value.isdigit() else None


def _fgsm_metrics(fgsm: dict[str, float], fgsm_crop: dict[str, float]) -> dict[str, float]:
    """MLflow metric names of a fold's FGSM errors (clip and single-crop), per epsilon."""
    return {**{f"{FGSM_PREFIX}{e}": v for e, v in fgsm.items()}, **{f"{FGSM_CROP_PREFIX}{e}": v for e, v in fgsm_crop.items()}}


def summarize(fold_metrics: Iterable[dict[str, float]]) -> dict[str, float]:
    """`<m>_mean`, `<m>_se` for test_error and every fgsm metric, plus `n_folds` (folds with a test error)."""
    per_fold = list(fold_metrics)
    names = {"test_error", "best_val_error"} | {
        k for m in per_fold for k in m if k.startswith((FGSM_PREFIX, FGSM_CROP_PREFIX))
    }
    out: dict[str, float] = {"n_folds": float(sum("test_error" in m for m in per_fold))}
    for name in sorted(names):
        values = [m[name] for m in per_fold if name in m and not math.isnan(m[name])]
        if values:
            mean, se = mean_se(values)  # the tables' statistics (results.mean_se); MLflow takes NaN for "no SE"
            out[f"{name}_mean"], out[f"{name}_se"] = mean, math.nan if se is None else se
    return out
