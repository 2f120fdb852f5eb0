"""A one-call study: the folds of one dataset x setup trained concurrently on one device, inside a time budget.

One GPU is mostly idle while a single fold of a small model trains (batches of 32 leave it waiting on
kernel launches), so `run_study` keeps `concurrency` worker processes busy, each training one fold
(then its FGSM) at a time, or with `pack` K > 1 a pack of up to K folds of one cell as one fused
model (`intermix_core.method.pack`), then each fold's FGSM. Before it starts it prints its own time estimate; at the budget every
worker stops after its current epoch (leaving a resumable checkpoint: running the study again
resumes), and the study keeps what finished: fold results, the report tables and `study.json`
(device, budget, elapsed, per-fold throughput). Needs no Kubeflow, MLflow or store: only torch,
torchaudio, numpy, pydantic, soundfile (to prepare data) and matplotlib (for the plots).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import torch

from intermix_core.config import SPEED_OPTIONS, parse_config
from intermix_core.config.grid import GridSpec, expand, expected_folds, grid_id, shards
from intermix_core.data import load_prepared
from intermix_core.method.attack import attack_fold
from intermix_core.method.devices import resolve_device
from intermix_core.method.pack import train_pack
from intermix_core.method.train import train_fold
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, fold_label, load_result, save_result
from intermix_core.results.statistics import aggregate, collect_results
from intermix_core.results.tables import write_reports
from intermix_core.run.estimate import fold_work


@dataclass
class FoldOutcome:
    """What one worker did with one fold."""

    label: str
    status: str  # "finished", "stopped" (budget reached), "failed"
    seconds: float
    epochs_done: int = 0
    samples_per_second: float | None = None
    test_error: float | None = None
    error: str | None = None
    # seconds from the worker's start to its first epoch's end, beyond a typical epoch: process start, data on the
    # device, and torch.compile of the fused kernels (several workers compiling at once share the CPU)
    warmup_seconds: float | None = None
    threads: int | None = None  # torch threads of the worker (INTERMIX_WORKER_THREADS, else worker_threads())


class EpochClock:
    """A FoldTracker that only notes when each epoch ended (no MLflow in a study): how long the warm-up took."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.ends: list[float] = []

    def start_fold(self, cfg: Any, fold: int, grid_id: str, tags: dict[str, str] | None = None,
                   resume_run_id: str | None = None) -> str:
        """No run to open: a study tracks nothing (the id names the fold: a pack's epochs count once, its first's)."""
        return f"study-{fold}"

    def ensure_current(self, run_id: str, force: bool = False) -> None:
        """A study's fold has no other attempt."""

    def log_epoch(self, run_id: str, record: Any) -> None:
        """Note the epoch's end (of the first fold that reports one: a pack's folds end their epochs together)."""
        self.first = getattr(self, "first", None) or run_id
        if run_id == self.first:
            self.ends.append(self.clock())

    def flush(self, run_id: str) -> bool:
        """Nothing is buffered."""
        return True

    def finish_fold(self, run_id: str, result: Any) -> None:
        """Nothing to finish."""

    def end_fold(self, run_id: str, status: str, reason: str) -> None:
        """Nothing to end."""

    def warmup_seconds(self) -> float | None:
        """The first epoch's end minus the start, less the median epoch (None before two epochs ended)."""
        if len(self.ends) < 2:
            return None
        steps = [b - a for a, b in zip(self.ends, self.ends[1:])]
        return round(max(0.0, self.ends[0] - self.start - statistics.median(steps)), 2)


def worker_threads(device: str, concurrency: int) -> int:
    """Torch threads per worker: $INTERMIX_WORKER_THREADS, else 1 on a GPU (the GPU does the work; more threads only
    contend), else the CPU's cores shared among the workers."""
    value = os.environ.get("INTERMIX_WORKER_THREADS")
    if value:
        return max(1, int(value))
    return 1 if device.startswith("cuda") else max(1, (os.cpu_count() or 1) // max(concurrency, 1))


@dataclass
class StudyReport:
    """The study's outcome (also written as study.json)."""

    grid_id: str
    device: str
    device_name: str
    concurrency: int
    budget_seconds: float
    elapsed_seconds: float
    estimate_seconds: tuple[float, float] | None
    speed_options: dict[str, Any] = field(default_factory=dict)  # the cells' optim speed options (SPEED_OPTIONS)
    folds: list[FoldOutcome] = field(default_factory=list)
    pack: int = 1  # folds of one cell a worker trains as one pack

    @property
    def finished(self) -> int:
        """Folds trained and attacked to the end."""
        return sum(f.status == "finished" for f in self.folds)


def estimate_seconds(samples: int, samples_per_s: float, concurrency: int) -> tuple[float, float]:
    """(best, worst) wall time: concurrency shares the device perfectly, or not at all."""
    single = samples / samples_per_s
    return single / max(concurrency, 1), single


def _worker(cfg_json: str, data_dir: str, fold: int, out_dir: str, device: str, deadline: float, queue: Any,
            threads: int = 1) -> None:
    """Train one fold until the deadline, then attack it if it finished; report a FoldOutcome on `queue`.

    `threads` bounds both torch's threads and torch.compile's compile workers (TORCHINDUCTOR_COMPILE_THREADS,
    read when inductor first loads): several workers compiling the fused kernels at once must not each take
    every core.
    """
    torch.set_num_threads(threads)
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    clock = EpochClock()
    cfg = parse_config(json.loads(cfg_json), source="study")
    label = fold_label(cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
    t0 = time.time()
    try:
        result = train_fold(cfg, data_dir, fold, out_dir, tracker=clock, progress=False, device=device,
                            deadline=deadline)
        if result.test_error is None:
            queue.put(FoldOutcome(label, "stopped", time.time() - t0, len(result.history), result.samples_per_second,
                                  warmup_seconds=clock.warmup_seconds(), threads=threads))
            return
        fgsm, fgsm_crop = attack_fold(Path(out_dir) / CHECKPOINT, data_dir, fold, device=device)
        result = result.model_copy(update={"fgsm": fgsm, "fgsm_crop": fgsm_crop})
        save_result(result, Path(out_dir) / RESULT)
        queue.put(FoldOutcome(label, "finished", time.time() - t0, len(result.history), result.samples_per_second,
                              result.test_error, warmup_seconds=clock.warmup_seconds(), threads=threads))
    except Exception as err:  # noqa: BLE001 - one failed fold must not end the study
        queue.put(FoldOutcome(label, "failed", time.time() - t0, error=f"{type(err).__name__}: {err}"[:500]))


def _pack_worker(cfg_json: str, data_dir: str, folds: list[int], out_dirs: list[str], device: str, deadline: float,
                 queue: Any, threads: int = 1) -> None:
    """Train `folds` of one cell as one pack until the deadline, then attack each finished fold; a FoldOutcome per fold."""
    torch.set_num_threads(threads)
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    clock = EpochClock()
    cfg = parse_config(json.loads(cfg_json), source="study")
    labels = {f: fold_label(cfg.dataset, cfg.setup_name, cfg.strategy.name, f) for f in folds}
    t0 = time.time()
    try:
        outcomes = train_pack(cfg, data_dir, folds, out_dirs, tracker=clock, progress=False, device=device,
                              deadline=deadline)
    except Exception as err:  # noqa: BLE001 - one failed pack must not end the study
        for f in folds:
            queue.put(FoldOutcome(labels[f], "failed", time.time() - t0, error=f"{type(err).__name__}: {err}"[:500]))
        return
    for f, out_dir in zip(folds, out_dirs):
        result = outcomes[f]
        try:
            if not isinstance(result, FoldResult):
                raise result
            if result.test_error is None:
                queue.put(FoldOutcome(labels[f], "stopped", time.time() - t0, len(result.history),
                                      result.samples_per_second, warmup_seconds=clock.warmup_seconds(), threads=threads))
                continue
            fgsm, fgsm_crop = attack_fold(Path(out_dir) / CHECKPOINT, data_dir, f, device=device)
            result = result.model_copy(update={"fgsm": fgsm, "fgsm_crop": fgsm_crop})
            save_result(result, Path(out_dir) / RESULT)
            queue.put(FoldOutcome(labels[f], "finished", time.time() - t0, len(result.history),
                                  result.samples_per_second, result.test_error, warmup_seconds=clock.warmup_seconds(),
                                  threads=threads))
        except Exception as err:  # noqa: BLE001 - a fold that failed alone: the others go on
            queue.put(FoldOutcome(labels[f], "failed", time.time() - t0, error=f"{type(err).__name__}: {err}"[:500]))


def run_study(
    grid: GridSpec, data_dir: str | Path, out_dir: str | Path, *, budget_seconds: float, concurrency: int,
    device: str = "auto", samples_per_s: float | None = None, log: Any = None, pack: int = 1,
) -> StudyReport:
    """Train every cell of a one-shard grid with `concurrency` workers inside the budget, each a pack of up to `pack`
    folds of one cell (1: one fold per worker, each alone)."""
    if pack < 1:
        raise ValueError(f"pack: expected a number of folds >= 1, got {pack}")
    log = log or sys.stdout
    if len(shards(grid)) != 1:
        raise ValueError("a study runs one dataset x setup (one prepared dataset); this grid has "
                         f"{len(shards(grid))}: give it one dataset and one setup")
    dev = resolve_device(device)
    cells = expand(grid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + budget_seconds
    name = _device_name(dev)
    manifest = load_prepared(data_dir, verify=False).manifest
    sizes = {ff.fold: ff.num_clips for ff in manifest.fold_files}
    missing = sorted({c.fold for c in cells} - set(sizes))
    if missing:
        raise ValueError(f"{data_dir}: no fold {missing[0]} prepared; folds there: {sorted(sizes)}")
    samples = sum(fold_work(c.config, c.fold, sizes).train_samples for c in cells)
    estimate = estimate_seconds(samples, samples_per_s, concurrency) if samples_per_s else None
    print(f"study {grid_id(grid)}: {len(cells)} folds, {samples:,} training samples, {concurrency} "
          f"{'packs of up to ' + str(pack) + ' folds' if pack > 1 else ''} at a time on "
          f"{name}; budget {budget_seconds / 60:.1f} min", file=log, flush=True)
    if estimate:
        print(f"estimate from {samples_per_s:,.0f} samples/s per process: {estimate[0] / 60:.1f} min (the device "
              f"shared perfectly) to {estimate[1] / 60:.1f} min (no gain from concurrency)", file=log, flush=True)
    options = {k: getattr(cells[0].config.optim, k) for k in SPEED_OPTIONS}
    print("speed options: " + ", ".join(f"{k} {v}" for k, v in options.items()), file=log, flush=True)
    report = StudyReport(grid_id(grid), dev.type, name, concurrency, budget_seconds, 0.0, estimate, options, pack=pack)
    threads = worker_threads(str(dev), concurrency)
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    queue = ctx.Queue()
    pending = _packs([c for c in cells if not _done(out, c.label)], pack)
    report.folds += [FoldOutcome(c.label, "finished", 0.0, test_error=load_result(out / c.label / RESULT).test_error)
                     for c in cells if _done(out, c.label)]
    running: dict[int, tuple[Any, set[str]]] = {}  # worker id -> (process, labels of its folds not yet reported)
    while pending or running:
        while pending and len(running) < concurrency and time.time() < deadline:
            group = pending.pop(0)
            c = group[0]
            if len(group) == 1 and pack == 1:
                p = ctx.Process(target=_worker, args=(c.config.model_dump_json(), str(data_dir), c.fold,
                                                      str(out / c.label), str(dev), deadline, queue, threads))
            else:
                p = ctx.Process(target=_pack_worker, args=(c.config.model_dump_json(), str(data_dir),
                                                           [g.fold for g in group], [str(out / g.label) for g in group],
                                                           str(dev), deadline, queue, threads))
            p.start()
            running[id(p)] = (p, {g.label for g in group})
            print(f"  started {', '.join(g.label for g in group)} ({len(running)} running, {len(pending)} waiting)",
                  file=log, flush=True)
        if time.time() >= deadline and pending:
            report.folds += [FoldOutcome(c.label, "not started", 0.0) for group in pending for c in group]
            pending = []
        try:
            outcome: FoldOutcome = queue.get(timeout=5.0)
        except Empty:  # poll for workers that died without a word (killed, out of memory)
            for key, (p, labels) in list(running.items()):
                if not p.is_alive() and p.exitcode:
                    del running[key]
                    report.folds += [FoldOutcome(label, "failed", 0.0, error=f"worker exit code {p.exitcode}")
                                     for label in sorted(labels)]
            continue
        for key, (p, labels) in list(running.items()):
            if outcome.label in labels:
                labels.discard(outcome.label)
                if not labels:  # the worker reported every fold it had
                    del running[key]
                    p.join()
        report.folds.append(outcome)
        print(f"  {outcome.status} {outcome.label} in {outcome.seconds:.0f} s"
              + (f", test error {outcome.test_error:.1f}%" if outcome.test_error is not None else "")
              + (f": {outcome.error}" if outcome.error else ""), file=log, flush=True)
    report.elapsed_seconds = time.time() - start
    _write(report, out, grid, log)
    return report


def _packs(cells: list[Any], pack: int) -> list[list[Any]]:
    """The cells in groups of up to `pack` folds of one cell (same configuration), in grid order."""
    by_config: dict[str, list[Any]] = {}
    for c in cells:
        by_config.setdefault(c.config.model_dump_json(), []).append(c)
    return [group[i:i + pack] for group in by_config.values() for i in range(0, len(group), pack)]


def _done(out: Path, label: str) -> bool:
    path = out / label / RESULT
    if not path.is_file():
        return False
    result = load_result(path)
    return result.status == "ok" and result.test_error is not None and bool(result.fgsm)


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def _write(report: StudyReport, out: Path, grid: GridSpec, log: Any) -> None:
    """study.json and, from the finished folds, the report tables and plots."""
    warmups = [f.warmup_seconds for f in report.folds if f.warmup_seconds is not None]
    data = asdict(report) | {"finished": report.finished}
    if warmups:  # how long workers took to get going (compiling at the same time): median and worst
        data["warmup_seconds"] = {"median": statistics.median(warmups), "max": max(warmups)}
        print(f"warm-up per worker (process start, data on the device, compilation): median "
              f"{statistics.median(warmups):.1f} s, at most {max(warmups):.1f} s", file=log, flush=True)
    (out / "study.json").write_text(json.dumps(data, indent=1))
    results = [r for r in collect_results(out) if r.test_error is not None] if any(out.rglob(RESULT)) else []
    if results:
        write_reports(aggregate(results, expected_folds(grid)), out / "reports", results)
    print(f"study: {report.finished}/{len(report.folds)} folds finished in {report.elapsed_seconds / 60:.1f} min "
          f"-> {out}", file=log, flush=True)
