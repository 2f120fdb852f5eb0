"""MLflow tracking of a grid: one parent run per (grid, dataset, setup, strategy), a nested run per fold.

Parents carry `<metric>_mean`, `<metric>_se` and `n_folds` over their folds' current results, so the
MLflow runs table compares strategies directly. See docs/tracking.md for tags and supersession.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from intermix_core.config import ExperimentConfig
from intermix_core.records import EpochRecord, FoldResult

T = "intermix."
GRID, DATASET, SETUP, STRATEGY, FOLD, KIND = (
    T + k for k in ("grid_id", "dataset", "setup", "strategy", "fold", "kind")
)
SUPERSEDED, SUPERSEDED_BY, ERROR = T + "superseded", T + "superseded_by", T + "error"
PARENT_ID = "mlflow.parentRunId"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not GenAI
FGSM_PREFIX = "fgsm_error_eps_"  # 10-crop clip error under FGSM
FGSM_CROP_PREFIX = "fgsm_crop_error_eps_"  # single-crop error under FGSM
EPOCH_METRICS = ("train_loss", "train_error", "val_error", "lr")
_TAG_MAX = 5000


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """MLflow 3's recommended local store, SQLite, at ./mlruns/mlflow.db (artifacts go beside it in ./mlruns)."""
    store = Path(cwd or Path.cwd()).absolute() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


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


def standard_error(values: list[float]) -> float:
    """Sample standard deviation (ddof=1) over sqrt(n); NaN below two values."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else float("nan")


EXPERIMENT = "intermix"  # the MLflow experiment every run of the project goes to by default


def ensure_experiment(client: MlflowClient, name: str = EXPERIMENT, artifact_location: str | None = None) -> str:
    """The id of the active experiment `name`, created (with `artifact_location`, if given) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:  # created concurrently by another fold
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ValueError(f"MLflow experiment {name!r} is deleted at {client.tracking_uri}; restore it or use another")
    if exp.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


class Tracker:
    """Logs folds of a grid to MLflow; `tracking_uri` None means $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self._experiment(experiment)
        self._last_step: dict[str, int] = {}

    # -- experiment, search ---------------------------------------------------------------------
    def _experiment(self, name: str) -> str:
        return ensure_experiment(self.client, name)

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
            }
            for tag, value in ((T + "git_commit", git_commit()), (T + "image", os.environ.get("INTERMIX_IMAGE")),
                               (T + "kfp_run_id", os.environ.get("KFP_RUN_ID"))):
                if value:
                    fold_tags[tag] = value
            if fold_tags.get(T + "git_commit"):
                fold_tags["mlflow.source.git.commit"] = fold_tags[T + "git_commit"]
            name = f"{'/'.join(cell[1:])}/fold{fold}"
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
        self.client.set_tag(run_id, SUPERSEDED, "false")
        self._last_step.pop(run_id, None)  # re-read from MLflow on the next log_epoch
        return run_id

    def _supersede_others(self, run_id: str, cell: tuple[str, str, str, str], fold: int) -> bool:
        """Tag every other attempt of this fold superseded (kill it if still RUNNING); True if any changed."""
        changed = False
        for run in self.fold_runs(*cell, fold=fold):
            other = run.info.run_id
            if other == run_id or run.data.tags.get(SUPERSEDED) == "true":
                continue
            self.client.log_batch(other, tags=[RunTag(SUPERSEDED, "true"), RunTag(SUPERSEDED_BY, run_id)])
            if run.info.status == "RUNNING":
                self.client.set_terminated(other, "KILLED")
            changed = True
        return changed

    def _last_logged_step(self, run_id: str) -> int:
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "train_loss")
            self._last_step[run_id] = max((m.step for m in history), default=-1)
        return self._last_step[run_id]

    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        """Log train_loss, train_error, val_error (if set) and lr at step=epoch; epochs already logged are skipped."""
        if record.epoch <= self._last_logged_step(run_id):
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, record.epoch) for k in EPOCH_METRICS
                   if (v := getattr(record, k)) is not None]
        self.client.log_batch(run_id, metrics=metrics, synchronous=True)
        self._last_step[run_id] = record.epoch

    def log_fgsm(self, run_id: str, fgsm: dict[str, float], fgsm_crop: dict[str, float] | None = None) -> None:
        """Log `fgsm_error_eps_<eps>` (and `fgsm_crop_error_eps_<eps>`) per epsilon, then refresh the parent."""
        self._log_metrics(run_id, _fgsm_metrics(fgsm, fgsm_crop or {}))
        self._refresh_parent_of(run_id)

    def finish_fold(self, run_id: str, result: FoldResult) -> None:
        """Log final metrics and the confusion matrix, end the run (FINISHED or FAILED), update the parent."""
        tags = self.client.get_run(run_id).data.tags
        got = (tags.get(DATASET), tags.get(SETUP), tags.get(STRATEGY), tags.get(FOLD))
        want = (result.dataset, result.setup, result.strategy, str(result.fold))
        if got != want:
            raise ValueError(f"result for {want} does not belong to run {run_id} of {got}")
        for record in result.history:
            self.log_epoch(run_id, record)
        final = {"test_error": result.test_error, "train_seconds": result.train_seconds,
                 "samples_per_second": result.samples_per_second}
        if result.best_val_error is not None:
            final["best_val_error"] = result.best_val_error
        final.update(_fgsm_metrics(result.fgsm, result.fgsm_crop))
        self._log_metrics(run_id, {k: v for k, v in final.items() if v is not None})
        if result.confusion is not None:
            self._log_confusion(run_id, result.confusion)
        if result.status == "failed":
            self.client.set_tag(run_id, ERROR, (result.error or "failed")[:_TAG_MAX])
        self.client.set_terminated(run_id, "FAILED" if result.status == "failed" else "FINISHED")
        self._refresh_parent_of(run_id)

    def _log_metrics(self, run_id: str, values: dict[str, float], step: int = 0, timestamp: int | None = None) -> None:
        ts = timestamp or int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)

    def _log_confusion(self, run_id: str, confusion: list[list[int]]) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.client.log_dict(run_id, {"rows": "true class", "cols": "predicted class", "matrix": confusion},
                             "confusion.json")
        n = len(confusion)
        fig = Figure(figsize=(2 + 0.25 * n, 2 + 0.25 * n), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.imshow(confusion, cmap="Blues")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if n <= 12:
            for i, row in enumerate(confusion):
                for j, v in enumerate(row):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        fig.tight_layout()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "confusion.png"
            fig.savefig(path)
            self.client.log_artifact(run_id, str(path))

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
            out[f"{name}_mean"] = statistics.fmean(values)
            out[f"{name}_se"] = standard_error(values)
    return out

