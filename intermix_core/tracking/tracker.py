"""MLflow tracking of a grid: one parent run per (grid, dataset, setup, strategy), a nested run per fold.

Parents carry `<metric>_mean`, `<metric>_se` and `n_folds` over their folds' current results, so the
MLflow runs table compares strategies directly. See docs/tracking.md for tags and supersession.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from intermix_core.common.redact import has_credentials, redact_uris
from intermix_core.common.text import cut
from intermix_core.config import ExperimentConfig
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
    KIND,
    PARENT_ID,
    SETUP,
    STRATEGY,
    SUPERSEDED,
    SUPERSEDED_BY,
    TAG_MAX,
    T,
)


class FoldSuperseded(RuntimeError):
    """Another attempt at the same fold took over this attempt's MLflow run: this one stops (one line)."""


def git_commit() -> str | None:
    """The code's commit: $INTERMIX_GIT_COMMIT (set in images), else `git rev-parse HEAD` beside this file."""
    if os.environ.get("INTERMIX_GIT_COMMIT"):
        return os.environ["INTERMIX_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT,
                 patience: float | None = None) -> None:
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        if patience is None:
            value = os.environ.get(PATIENCE_ENV) or str(DEFAULT_PATIENCE)
            try:
                patience = float(value)
            except ValueError:
                patience = -1.0
            if not 0 <= patience < math.inf:
                raise ValueError(f"{PATIENCE_ENV}={cut(value, 40)}: expected a number of seconds, e.g. 300")
        self.patience = patience
        quiet_run_links(self.tracking_uri)
        with schema_lock(self.tracking_uri):  # opening a sqlite store creates or upgrades its schema
            self._mlflow = MlflowClient(tracking_uri=self.tracking_uri)
            self.client = PatientClient(self._mlflow, self.tracking_uri, patience)
            self.experiment_id = self._experiment(experiment)
        self._last_step: dict[str, int] = {}  # the highest epoch MLflow holds, per run
        self._pending: dict[str, list[Metric]] = {}  # epoch metrics not yet sent, per run, oldest first
        self._pending_top: dict[str, int] = {}  # the highest epoch among them
        self._next_try = 0.0  # monotonic time before which per-epoch logging does not call MLflow
        self._failures = 0  # consecutive failed per-epoch attempts
        self._token = uuid.uuid4().hex  # this Tracker's attempt id (the ATTEMPT tag of the runs it holds)

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
        cell = (grid_id, cfg.dataset, cfg.setup_name, cfg.strategy.name)
        run_id = self._reopen(resume_run_id, cfg, fold, grid_id) if resume_run_id else None
        if run_id is None:
            parent_id = self._parent_for(cfg, grid_id, dict(tags or {}))
            fold_tags = {
                **(tags or {}), PARENT_ID: parent_id, GRID: grid_id, DATASET: cfg.dataset, SETUP: cfg.setup_name,
                STRATEGY: cfg.strategy.name, T + "model": cfg.model, FOLD: str(fold), KIND: "fold", SUPERSEDED: "false",
                ATTEMPT_STARTED: str(int(time.time() * 1000)), ATTEMPT: self._token,
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
        self.client.log_batch(run_id, tags=[RunTag(SUPERSEDED, "false"), RunTag(ATTEMPT, self._token),
                                            RunTag(ATTEMPT_STARTED, str(int(time.time() * 1000)))])
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

    def ensure_current(self, run_id: str) -> None:
        """Raise FoldSuperseded if another attempt took this run over (superseded it, or reopened it).

        One quick request; while MLflow is unreachable the attempt carries on (it cannot be told), and
        during a known outage (epoch metrics waiting for their next try) no request is made.
        """
        if time.monotonic() < self._next_try:
            return
        try:
            with one_attempt(EPOCH_TIMEOUT):
                tags = self._mlflow.get_run(run_id).data.tags
        except Exception:  # noqa: BLE001 - an outage must not stop training
            return
        holder = tags.get(ATTEMPT)
        if tags.get(SUPERSEDED) == "true":
            raise FoldSuperseded(f"MLflow run {run_id} was superseded by run {tags.get(SUPERSEDED_BY)} (a later attempt "
                                 "at this fold); this attempt stops")
        if holder and holder != self._token:
            raise FoldSuperseded(f"MLflow run {run_id} was reopened by another attempt at this fold (attempt {holder[:8]}, "
                                 "resuming from the stored checkpoint); this attempt stops")

    def _last_logged_step(self, run_id: str) -> int:
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "train_loss")
            self._last_step[run_id] = max((m.step for m in history), default=-1)
        return self._last_step[run_id]

    # -- epoch metrics: best effort, buffered through outages -------------------------------------
    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        """Log train_loss, train_error, val_error (if set) and lr at step=epoch; epochs already logged are skipped.

        Never fails on an MLflow outage: the metrics wait in a buffer (with a warning) and go out with
        a later call, `flush()` or `finish_fold`, each exactly once.
        """
        if record.epoch <= max(self._last_logged_step(run_id), self._pending_top.get(run_id, -1)):
            return
        now = int(time.time() * 1000)  # kept with the metric: a resend is then identical, and MLflow keeps one copy
        self._pending.setdefault(run_id, []).extend(
            Metric(k, float(v), now, record.epoch) for k in EPOCH_METRICS if (v := getattr(record, k)) is not None)
        self._pending_top[run_id] = record.epoch
        if time.monotonic() >= self._next_try:
            self._send_pending(run_id)

    def flush(self, run_id: str | None = None) -> bool:
        """Try once now to send buffered epoch metrics (of `run_id`, or of every run); True if none are left."""
        for rid in [run_id] if run_id else list(self._pending):
            self._send_pending(rid)
        return not any(self._pending.get(rid) for rid in ([run_id] if run_id else list(self._pending)))

    def pending_epochs(self, run_id: str) -> list[int]:
        """Epochs of `run_id` whose metrics are buffered, not yet in MLflow."""
        return sorted({m.step for m in self._pending.get(run_id, [])})

    def _send_pending(self, run_id: str, patient: bool = False) -> None:
        """Send `run_id`'s buffered metrics: one quick attempt (a warning if it fails), or patiently (may raise)."""
        pending = self._pending.get(run_id)
        if not pending:
            return
        send = functools.partial(self._mlflow.log_batch, run_id, synchronous=True)
        try:
            while pending:
                chunk = pending[:1000]  # log_batch takes at most 1000 metrics
                if patient:
                    self.client.call(send, metrics=chunk)
                else:
                    with one_attempt(EPOCH_TIMEOUT):
                        send(metrics=chunk)
                self._last_step[run_id] = max(self._last_step.get(run_id, -1), max(m.step for m in chunk))
                del pending[: len(chunk)]
        except Exception as err:  # noqa: BLE001 - epoch logging must not stop training
            if patient:
                raise
            self._failures += 1
            wait = min(EPOCH_RETRY[0] * 2 ** (self._failures - 1), EPOCH_RETRY[1])
            self._next_try = time.monotonic() + wait
            epochs = self.pending_epochs(run_id)
            warn(f"warning: MLflow at {redact_uris(self.tracking_uri)} unreachable ({reason(err)}); training goes on, "
                  f"metrics of {len(epochs)} epoch(s) ({epochs[0]}..{epochs[-1]}) kept to send later, next try in "
                  f"{wait:.0f} s")
            return
        if self._failures:
            warn(f"MLflow at {redact_uris(self.tracking_uri)} reachable again: buffered epoch metrics sent")
        self._failures, self._next_try = 0, 0.0

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

    def _finish_fold(self, run_id: str, result: FoldResult) -> None:
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
        self.client.set_terminated(run_id, "FAILED" if result.status == "failed" else "FINISHED")
        self._print_link(run)
        self._refresh_parent_of(run_id)

    def _print_link(self, run: Run) -> None:
        """MLflow's "View run" line, with credentials removed, where quiet_run_links silenced MLflow's own."""
        if QUIETED and os.environ.get(QUIET) and has_credentials(self.tracking_uri) and \
                self.tracking_uri.startswith(("http://", "https://")):
            url = f"{self.tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            print(f"View run {run.info.run_name} at: {redact_uris(url)}", flush=True)

    def _log_metrics(self, run_id: str, values: dict[str, float], step: int = 0, timestamp: int | None = None) -> None:
        ts = timestamp or int(time.time() * 1000)
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
        seen_at = int(time.time() * 1000)  # a slower, staler update must not win over a newer one
        runs = self.fold_runs(grid_id, dataset, setup, strategy)
        current: dict[str, Run] = {}
        for run in runs:  # oldest first: the newest per fold wins
            if run.info.status == "FINISHED" and run.data.tags.get(SUPERSEDED) != "true":
                current[run.data.tags[FOLD]] = run
        stats = summarize(r.data.metrics for r in current.values())
        self._log_metrics(parent.info.run_id, stats, timestamp=seen_at)
        folds = sorted(current, key=int)
        self.client.set_tag(parent.info.run_id, T + "folds", ",".join(folds))
        active = any(r.info.status == "RUNNING" and r.data.tags.get(SUPERSEDED) != "true" for r in runs)
        if not active:
            self.client.set_terminated(parent.info.run_id, "FINISHED")
        return stats


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
