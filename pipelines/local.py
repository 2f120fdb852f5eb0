"""Run grid and rerun pipelines with KFP's local runner: no cluster, by default everything under one work directory.

    <workdir>/store/       the grid store (checkpoints, results, reports, grid.json), unless a store is given
    <workdir>/mlflow.db    the MLflow tracking store (sqlite), unless a tracking URI is given;
                           artifacts in <workdir>/mlartifacts/
    <workdir>/kfp/         KFP's local pipeline root (task outputs) and its cache (kfp/.kfp_cache)
    <workdir>/logs/        the local runner's task logs, one file per pipeline run

With a store (a folder or s3://, endpoint and credentials from the usual environment) and a tracking
URI (an MLflow server), the same local run writes to those servers instead. Tasks run as subprocesses
of this Python (`SubprocessRunner(use_venv=False)`), at most two fold iterations at once; retries
apply, GPU, placement and Kubernetes settings are ignored locally (the pipelines are built with
`local=True`: version-tagged images, device 'auto').
"""

import builtins
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import local
from mlflow import MlflowClient
from tqdm import tqdm

from intermix_core.common.names import check_pipeline_args
from intermix_core.common.redact import redact_uris
from intermix_core.config.grid import FoldCell, GridSpec, expand, grid_id
from intermix_core.records import RESULT, load_result
from intermix_core.run.steps import PARENT_ENV
from intermix_core.store.grid_store import save_grid_spec
from intermix_core.store.layout import cell_prefix
from intermix_core.store.storage import Storage, open_storage
from intermix_core.tracking.client import ensure_experiment, schema_lock
from pipelines.grid_pipeline import grid_pipelines
from pipelines.options import ClusterOptions
from pipelines.rerun_pipeline import rerun_pipeline

DEFAULT_WORKDIR = Path("intermix-work")
LOCAL_PARALLELISM = 2  # loop iterations kfp 2.17.3's local runner runs at once (hard-coded there)


@dataclass(frozen=True)
class Workdir:
    """A local work directory, and the store and MLflow it uses (by default inside it)."""

    root: Path
    store_uri: str | None = None  # a folder or s3:// root; None: <root>/store
    tracking: str | None = None  # an MLflow tracking URI; None: sqlite <root>/mlflow.db

    @property
    def store(self) -> str:
        """The grid store root: the given one, else <root>/store (absolute)."""
        return self.store_uri or str((self.root / "store").resolve())

    @property
    def local_tracking(self) -> bool:
        """True when tracking goes to the work directory's own sqlite store."""
        return self.tracking is None

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI: the given one, else the work directory's sqlite store."""
        return self.tracking or f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def kfp_root(self) -> Path:
        """KFP's local pipeline root."""
        return self.root / "kfp"

    @property
    def logs(self) -> Path:
        """Task logs of local runs."""
        return self.root / "logs"


@dataclass
class LocalRun:
    """What a local run did: per pipeline, None for success or the failure message; and where its log is."""

    grid_id: str
    outcomes: dict[str, str | None] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every pipeline succeeded."""
        return all(v is None for v in self.outcomes.values())


def init_local(work: Workdir, tracking: bool = True) -> None:
    """Initialise KFP's local runner (subprocesses, caching on) and the MLflow experiment once, up front."""
    work.root.mkdir(parents=True, exist_ok=True)
    work.logs.mkdir(parents=True, exist_ok=True)
    if not work.store_uri:
        Path(work.store).mkdir(parents=True, exist_ok=True)
    # two loop iterations run at once: give each task half the cores instead of letting torch oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // LOCAL_PARALLELISM)))
    os.environ[PARENT_ENV] = str(os.getpid())  # the fold trainers stop (with a checkpoint) when this process is gone
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work.kfp_root.resolve()),
               enable_caching=True, raise_on_error=True)
    if tracking:  # create the store's schema and the experiment once: two fold tasks doing it at once would race


        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on the terminal
        artifacts = (work.root / "mlartifacts").resolve().as_uri() if work.local_tracking else None
        with schema_lock(work.tracking_uri):
            client = MlflowClient(tracking_uri=work.tracking_uri)
        ensure_experiment(client, artifact_location=artifacts)


class _LogStream(io.TextIOBase):
    """A thread-safe text sink for the runner's output: a log file, optionally echoed to the terminal.

    The runner prints each task's arguments (a tracking URI with a password among them): every line is
    written with credentials in URIs replaced by `***` (whole lines, so a URI split across writes is caught).
    """

    def __init__(self, path: Path, echo: Any | None = None) -> None:
        self._file = path.open("a", buffering=1)
        self._echo = echo
        self._lock = threading.Lock()
        self._partial = ""

    def write(self, s: str) -> int:
        with self._lock:
            lines = (self._partial + s).split("\n")
            self._partial = lines.pop()
            if lines:
                self._emit("\n".join(redact_uris(line) for line in lines) + "\n")
        return len(s)

    def _emit(self, text: str) -> None:
        self._file.write(text)
        if self._echo is not None:
            self._echo.write(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._emit(redact_uris(self._partial))
                self._partial = ""
        self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


def _result_state(storage: Storage, key: str) -> tuple[str | None, bool]:
    """(checksum, done) of a fold's result in the store: done once it has FGSM numbers or is a failure."""
    sha = storage.checksum(key)
    if sha is None:
        return None, False
    with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as tmp:
        r = load_result(storage.download_file(key, Path(tmp) / RESULT))
        return sha, bool(r.fgsm) or r.status == "failed"
    return sha, False


@contextlib.contextmanager
def _progress(desc: str, store: str, gid: str, cells: list[FoldCell], enabled: bool, fresh: bool = False) -> Iterator[None]:
    """A tqdm bar of finished folds, polled from the store while a pipeline runs (`fresh`: only results written now)."""
    storage = open_storage(store)
    keys = [f"{cell_prefix(gid, *c.key)}/{RESULT}" for c in cells]
    before = {k: _result_state(storage, k)[0] for k in keys} if fresh else {}
    bar = tqdm(total=len(keys), desc=desc, unit="fold", disable=not enabled, dynamic_ncols=True)
    stop = threading.Event()

    def count() -> int:
        states = [(k, _result_state(storage, k)) for k in keys]
        return sum(done and (not fresh or sha != before.get(k)) for k, (sha, done) in states)

    def poll() -> None:
        while True:
            with contextlib.suppress(Exception):  # a store hiccup only delays the bar
                bar.n = count()
                bar.refresh()
            if stop.wait(2.0):
                return

    thread = threading.Thread(target=poll, daemon=True)
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join()
            with contextlib.suppress(Exception):
                bar.n = count()
        bar.close()


def _run_pipeline(pipeline: Any, args: dict[str, Any], log: Path, verbose: bool) -> str | None:
    """Run one pipeline locally with its output in `log`; None on success, else the failure message."""
    check_pipeline_args(args)  # what reaches the pipeline's parameters: no newline, no KFP placeholder
    stream = _LogStream(log, echo=sys.stdout if verbose else None)
    # kfp 2.17.3 indents task output by swapping builtins.print per task, not thread-safely: with two
    # parallel iterations an indenting print can be left behind, so put the real one back afterwards
    real_print = builtins.print
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(stream):
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            pipeline(**args)
        return None
    except RuntimeError as err:
        return _plain(str(err))
    finally:
        builtins.print = real_print
        stream.close()


def _plain(text: str) -> str:
    """Text without ANSI colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_grid_local(
    grid: GridSpec, work: Workdir, sources: dict[str, str] | None = None, *, tracking: bool = True,
    progress: bool = True, verbose: bool = False, opts: ClusterOptions | None = None,
) -> LocalRun:
    """Run every shard pipeline of `grid` locally, in order; failures are recorded, not raised."""
    gid = grid_id(grid)
    init_local(work, tracking)
    save_grid_spec(work.store, gid, grid.model_dump(mode="json"))
    sources = {**grid.sources, **(sources or {})}
    report = LocalRun(gid)
    cells = expand(grid)
    for shard, pipe in grid_pipelines(grid, opts, local=True):
        log = work.logs / f"{gid}-{shard.dataset}-{shard.setup}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        args = {"store_root": work.store, "tracking_uri": work.tracking_uri if tracking else "",
                "source": sources.get(shard.dataset, "")}
        shard_cells = [c for c in cells if (c.dataset, c.setup) == (shard.dataset, shard.setup)]
        with _progress(shard.label, work.store, gid, shard_cells, progress and not verbose):
            report.outcomes[shard.label] = _run_pipeline(pipe, args, log, verbose)
        report.logs.append(log)
    return report


def rerun_fold_local(
    grid: GridSpec, cell: FoldCell, work: Workdir, source: str | None = None, *, restart: bool = False,
    tracking: bool = True, progress: bool = True, verbose: bool = False, opts: ClusterOptions | None = None,
) -> LocalRun:
    """Rerun one fold of `grid` locally with the rerun pipeline, then re-aggregate the grid."""
    gid = grid_id(grid)
    init_local(work, tracking)
    save_grid_spec(work.store, gid, grid.model_dump(mode="json"))
    report = LocalRun(gid)
    log = work.logs / f"{gid}-rerun-{cell.label.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    args = {"store_root": work.store, "tracking_uri": work.tracking_uri if tracking else "",
            "source": source or grid.sources.get(cell.dataset, ""), "restart": restart}
    with _progress(f"rerun {cell.label}", work.store, gid, [cell], progress and not verbose, fresh=True):
        report.outcomes[cell.label] = _run_pipeline(rerun_pipeline(grid, cell, opts, local=True), args, log, verbose)
    report.logs.append(log)
    return report

