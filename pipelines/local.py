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

While a run goes on, the terminal shows the finished folds and, for each running fold, its epoch, loss,
seconds per epoch and the time left (what `intermix status` computes, read from the store and MLflow).

Signals (`LocalStop`): each task runs in a process group of its own, so a Ctrl-C reaches this process
alone and is forwarded. The first SIGINT or SIGTERM stops the running folds after their epoch with a
checkpoint (their MLflow runs end KILLED), starts no task and retries none (kfp's local runner would
retry a stopped task: kfp/local/orchestrator/task_executor.py, `execute_task`); the second stops them at
once, and what still runs 15 s later is killed. The same command then resumes every fold.
"""

import builtins
import contextlib
import io
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import local
from kfp.local import subprocess_task_handler
from kfp.local.orchestrator import task_executor
from mlflow import MlflowClient
from tqdm import tqdm

from intermix_core.common.names import check_pipeline_args
from intermix_core.common.redact import redact_uris
from intermix_core.common.text import duration
from intermix_core.config.grid import FoldCell, GridSpec, expand, grid_id
from intermix_core.records import RESULT, load_result
from intermix_core.run.status import grid_status
from intermix_core.run.steps import PARENT_ENV
from intermix_core.store.grid_store import save_grid_spec
from intermix_core.store.layout import cell_prefix
from intermix_core.store.storage import Storage, open_storage
from intermix_core.tracking.client import ensure_experiment, schema_lock
from pipelines.grid_pipeline import grid_pipelines
from pipelines.options import ClusterOptions
from pipelines.rerun_pipeline import rerun_pipeline
from pipelines.workdir import Workdir

LOCAL_PARALLELISM = 2  # loop iterations kfp 2.17.3's local runner runs at once (hard-coded there)
KILL_AFTER = 15.0  # seconds after a second signal before the tasks still running are killed
WATCH_EVERY = 5.0  # seconds between two readings of the running folds' epochs (the tracker sends every 5 s)


@dataclass
class LocalRun:
    """What a local run did: per pipeline, None for success or the failure message; and where its log is."""

    grid_id: str
    outcomes: dict[str, str | None] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    stopped: int | None = None  # the signal that stopped the run, if one did

    @property
    def ok(self) -> bool:
        """True if every pipeline succeeded."""
        return all(v is None for v in self.outcomes.values())


STOPPED_MARK = "[intermix: the run is stopping]"


class LocalRunStopped(RuntimeError):
    """A task of a local run that a signal stopped, or that was not started because the run is stopping."""


class LocalStop:
    """SIGINT/SIGTERM during a local run: forwarded to the tasks (each in a process group of its own), once or twice.

    The first signal asks the running folds to stop after their epoch with a checkpoint; tasks that would start or
    be retried afterwards are not (`LocalRunStopped`). The second asks them to stop at once, and KILL_AFTER seconds
    later what still runs is killed.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.event = threading.Event()
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        self.signum = self.signum or signum
        self.event.set()
        name = signal.Signals(signum).name
        if self.count == 1:
            _say(f"intermix: {name}: stopping: running folds stop after their epoch with a checkpoint, nothing new "
                 "starts (Ctrl-C again stops them at once)")
        elif self.count == 2:
            _say(f"intermix: {name} again: stopping the running tasks now")
            threading.Timer(KILL_AFTER, self.kill).start()
        else:
            self.kill()
        self.forward(signal.SIGINT)  # a task's SIGINT handler stops it after its epoch; its second, at once

    def forward(self, signum: int) -> None:
        """Send `signum` to every running task's process group."""
        with self._lock:
            children = list(self._children)
        for child in children:
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signum)

    def kill(self) -> None:
        """Kill every task still running (their MLflow runs read as killed once their heartbeat is stale)."""
        self.forward(signal.SIGKILL)

    def run_task(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        """kfp's `run_local_subprocess` with the task in a process group of its own, known to this controller."""
        if self.event.is_set():
            raise LocalRunStopped(f"not started {STOPPED_MARK}")
        env = {**os.environ, **env_vars} if env_vars else None
        with subprocess.Popen(full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                              env=env, start_new_session=True) as process:
            with self._lock:
                self._children.add(process)
            try:
                if self.event.is_set():  # a signal came while it started: pass it on
                    os.killpg(process.pid, signal.SIGINT)
                assert process.stdout is not None
                for line in iter(process.stdout.readline, ""):
                    print(line, end="")  # kfp's per-task print: indented, into the run's log
                print("\n")
                code = process.wait()
            finally:
                with self._lock:
                    self._children.discard(process)
        if code != 0 and self.event.is_set():
            raise LocalRunStopped(f"stopped by {signal.Signals(self.signum or signal.SIGINT).name} {STOPPED_MARK}")
        return code

    def sleep(self, seconds: float) -> None:
        """kfp's wait between a task's retries, cut short when the run stops."""
        self.event.wait(seconds)


class _StopAwareTime:
    """The `time` module as kfp's task executor sees it: its retry back-off ends when the run stops."""

    def __init__(self, stop: LocalStop) -> None:
        self._stop = stop

    def sleep(self, seconds: float) -> None:
        self._stop.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_NOTICES: queue.SimpleQueue[str] = queue.SimpleQueue()  # lines for the progress display (safe from a signal handler)
_DISPLAY = threading.Event()  # set while a progress display runs: it prints the notices above its bars


def _say(line: str) -> None:
    """One line on stderr, from a signal handler: through the progress display if one runs, else a plain write."""
    if _DISPLAY.is_set():
        _NOTICES.put(line)
        return
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), f"{line}\n".encode())


class _QuietStops(logging.Filter):
    """Leaves out kfp's 'Task ... failed with exception' lines of the tasks a signal stopped (the run says it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(record.msg, str) or STOPPED_MARK not in record.msg


@contextlib.contextmanager
def stopping() -> Iterator[LocalStop]:
    """Within the block, SIGINT/SIGTERM stop the local run (`LocalStop`) instead of raising; tasks run under it."""
    stop = LocalStop()
    saved = (subprocess_task_handler.run_local_subprocess, task_executor.time)
    subprocess_task_handler.run_local_subprocess = stop.run_task
    task_executor.time = _StopAwareTime(stop)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    for sig in previous:
        signal.signal(sig, stop)
    quiet = _QuietStops()
    logging.getLogger().addFilter(quiet)  # kfp logs a task's exception on the root logger
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        subprocess_task_handler.run_local_subprocess, task_executor.time = saved
        logging.getLogger().removeFilter(quiet)


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


def running_lines(grid: GridSpec, work: Workdir, cells: list[FoldCell], tracking: bool) -> list[str]:
    """A line per running fold (epoch, loss, s/epoch, time left) and one for the time left, as `status` computes them."""
    st = grid_status(grid, work.store, work.tracking_uri if tracking else None, cells=cells)
    lines = []
    for f in st.folds:
        if f.state != "running":
            continue
        parts = [f"epoch {f.epoch or 0}/{f.epochs}"]
        if f.loss is not None:
            parts.append(f"loss {f.loss:.3f}")
        if f.seconds_per_epoch:
            parts.append(f"{f.seconds_per_epoch:.1f} s/epoch")
        if f.seconds_left is not None:
            parts.append(f"{duration(f.seconds_left)} left")
        lines.append(f"  {f.label}: {', '.join(parts)}")
    left, unmeasured = st.seconds_left()
    if lines and left is not None:
        lines.append(f"  about {duration(left / LOCAL_PARALLELISM)} of training left ({LOCAL_PARALLELISM} folds at a time"
                     + (f"; {unmeasured} fold(s) not yet measured" if unmeasured else "") + ")")
    return lines


@contextlib.contextmanager
def _progress(desc: str, store: str, gid: str, cells: list[FoldCell], enabled: bool, fresh: bool = False,
              watch: Callable[[], list[str]] | None = None) -> Iterator[None]:
    """A tqdm bar of finished folds, polled from the store while a pipeline runs (`fresh`: only results written now),
    and under it the lines `watch` gives (the running folds), read every WATCH_EVERY seconds."""
    storage = open_storage(store)
    keys = [f"{cell_prefix(gid, *c.key)}/{RESULT}" for c in cells]
    before = {k: _result_state(storage, k)[0] for k in keys} if fresh else {}
    bar = tqdm(total=len(keys), desc=desc, unit="fold", disable=not enabled, dynamic_ncols=True)
    lines: list[tqdm] = []
    stop = threading.Event()

    def count() -> int:
        states = [(k, _result_state(storage, k)) for k in keys]
        return sum(done and (not fresh or sha != before.get(k)) for k, (sha, done) in states)

    def show(texts: list[str]) -> None:
        while len(lines) < len(texts):
            lines.append(tqdm(total=0, position=len(lines) + 1, bar_format="{desc}", leave=False, dynamic_ncols=True))
        for line, text in zip(lines, texts + [""] * (len(lines) - len(texts))):
            line.set_description_str(text, refresh=True)

    def notices() -> None:
        while not _NOTICES.empty():
            bar.write(_NOTICES.get(), file=sys.stderr)

    def poll() -> None:
        counted = watched = 0.0
        while True:
            notices()
            if time.monotonic() - counted >= 2.0:
                counted = time.monotonic()
                with contextlib.suppress(Exception):  # a store hiccup only delays the bar
                    bar.n = count()
                    bar.refresh()
            if watch is not None and time.monotonic() - watched >= WATCH_EVERY:
                watched = time.monotonic()
                with contextlib.suppress(Exception):  # so does an MLflow hiccup the fold lines
                    show(watch())
            if stop.wait(0.25):
                return

    thread = threading.Thread(target=poll, daemon=True)
    if enabled:
        _DISPLAY.set()
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join()
            _DISPLAY.clear()
            notices()
            with contextlib.suppress(Exception):
                bar.n = count()
        for line in lines:
            line.close()
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
    with stopping() as stop:
        for shard, pipe in grid_pipelines(grid, opts, local=True):
            if stop.event.is_set():
                break
            log = work.logs / f"{gid}-{shard.dataset}-{shard.setup}-{time.strftime('%Y%m%d-%H%M%S')}.log"
            args = {"store_root": work.store, "tracking_uri": work.tracking_uri if tracking else "",
                    "source": sources.get(shard.dataset, "")}
            shard_cells = [c for c in cells if (c.dataset, c.setup) == (shard.dataset, shard.setup)]
            watch = (lambda c=shard_cells: running_lines(grid, work, c, tracking)) if tracking else None
            with _progress(shard.label, work.store, gid, shard_cells, progress and not verbose, watch=watch):
                report.outcomes[shard.label] = _run_pipeline(pipe, args, log, verbose)
            report.logs.append(log)
        report.stopped = stop.signum
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
    watch = (lambda: running_lines(grid, work, [cell], tracking)) if tracking else None
    with stopping() as stop:
        with _progress(f"rerun {cell.label}", work.store, gid, [cell], progress and not verbose, fresh=True, watch=watch):
            report.outcomes[cell.label] = _run_pipeline(rerun_pipeline(grid, cell, opts, local=True), args, log, verbose)
        report.stopped = stop.signum
    report.logs.append(log)
    return report

