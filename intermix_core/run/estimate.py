"""What a grid costs: training samples per cell and device-hours from measured throughput.

Throughput comes from `benchmarks/bench_throughput.py --save FILE.json` (one record per model,
precision and augmentation, with the device it was measured on). The package ships the figures
measured for this project in `intermix_core/run/throughput.json`; `intermix estimate GRID
--throughput FILE` uses another file. Work per fold, from the resolved config:

- training samples = epochs x rows per epoch (N training clips; N//2 pairs x 2 under adjacent pairing);
- 10-crop evaluations = the test fold's clips x the evaluated epochs (every eval_every, and the last);
- FGSM = the test fold's clips, as (2 + number of epsilons) evaluations (one gradient pass, one
  forward per epsilon and eps = 0).
Hours = samples / full_samples_per_s + evaluated clips / eval_clips_per_s.

One grid is estimated on one kind of device: `--device cpu|cuda`, else the kind whose records cover the most of
its cells (a GPU on a tie). The shipped records hold one thread of an AMD EPYC (2026-11-30) and one NVIDIA H200
(2026-12-04, EnvNet and EnvNet-v2 only), each with its device, date and source. With a number of GPUs (`intermix
estimate --max-gpus N`) the wall-clock time is that of the folds placed on N devices, longest first, each fold on
one device (the pipelines' fold loops run each fold as one task).
With `pack` K > 1 (K folds of a cell trained as one pack, `intermix_core.method.pack`), the rate is
a `bench_throughput.py --pack K` record's, the aggregate samples/s of the K folds: the folds' samples
over it count packs, not folds. A model without a record for that pack size falls back to its
one-fold figure (folds one at a time), and the estimate says so.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from intermix_core.config import FOLD_CLIPS, ExperimentConfig
from intermix_core.config.grid import GridSpec, expand
from intermix_core.method.packing import split_folds

THROUGHPUT_FILE = "throughput.json"
_REQUIRED = ("model", "device", "precision", "augment", "data_samples_per_s", "step_samples_per_s", "full_samples_per_s")


@dataclass(frozen=True)
class FoldWork:
    """What one fold training costs in samples and evaluated clips."""

    train_samples: int
    eval_clips: int  # 10-crop evaluations during training and at the end
    fgsm_clips: int  # clip-evaluation equivalents of the FGSM step


def fold_work(cfg: ExperimentConfig, fold: int, fold_clips: dict[int, int] | None = None) -> FoldWork:
    """Training samples and evaluated clips of one fold of `cfg`: on the official dataset, or on `fold_clips`."""
    o = cfg.resolved_optim()
    assert o.epochs is not None
    sizes = fold_clips or dict(enumerate(FOLD_CLIPS[cfg.dataset], start=1))
    n_train, n_test = sum(sizes.values()) - sizes[fold], sizes[fold]
    rows = 2 * (n_train // 2) if cfg.strategy.pairing == "adjacent_pairs" else n_train
    evaluations = o.epochs // o.eval_every + (o.epochs % o.eval_every != 0)
    fgsm = (2 + len([e for e in cfg.attack.epsilons if e != 0.0])) * n_test
    return FoldWork(train_samples=o.epochs * rows, eval_clips=evaluations * n_test, fgsm_clips=fgsm)


class ThroughputError(ValueError):
    """A throughput file that cannot be used; the message names the file and the problem."""


def load_throughput(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Records of a `bench_throughput.py --save` file (the packaged figures without a path)."""
    if path is None:
        text, where = resources.files("intermix_core.run").joinpath(THROUGHPUT_FILE).read_text(), f"intermix_core/run/{THROUGHPUT_FILE}"
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ThroughputError(f"{where}: cannot read ({err.strerror or err})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ThroughputError(f"{where}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ThroughputError(f"{where}: expected a list of records written by benchmarks/bench_throughput.py --save")
    for i, r in enumerate(records):
        missing = [k for k in _REQUIRED if k not in r]
        if missing:
            raise ThroughputError(f"{where}: record {i} lacks {', '.join(missing)}")
    return records


@dataclass
class SetupEstimate:
    """The cost of one dataset x setup of a grid (all its strategies and folds)."""

    dataset: str
    setup: str
    model: str
    folds: int = 0
    train_samples: int = 0
    eval_clips: int = 0
    hours: float | None = 0.0
    devices: set[str] = field(default_factory=set)
    unmeasured: set[str] = field(default_factory=set)
    fold_hours: list[float] = field(default_factory=list)  # each measured fold's hours (training, evaluation, FGSM)
    task_hours: list[float] = field(default_factory=list)  # each device task's hours: a fold's, or a pack's folds' sum
    device_type: str | None = None  # cpu or cuda: the kind of device the figures came from
    pack_unmeasured: set[str] = field(default_factory=set)  # packs asked for but not measured: one-fold figures used


def _pick(records: list[dict[str, Any]], cfg: ExperimentConfig, device: str | None, pack: int = 1
          ) -> dict[str, Any] | None:
    """The measurement for cfg's model, precision, augmentation and pack size (a GPU one first unless `device` says)."""
    augment = cfg.augment.scale or cfg.augment.gain
    # `auto` runs fp32 on a GPU and on most CPUs (bf16 only on CPUs with native bfloat16): estimated as fp32
    precision = "fp32" if cfg.optim.precision == "auto" else cfg.optim.precision
    hits = [r for r in records if r["model"] == cfg.model and r["precision"] == precision
            and bool(r["augment"]) == augment and (device is None or r["device"] == device)
            and int(r.get("pack", 1)) == pack]
    return max(hits, key=lambda r: (r["device"] == "cuda", r.get("date", ""))) if hits else None


def _device_type(grid: GridSpec, records: list[dict[str, Any]]) -> str | None:
    """The kind of device whose records cover the most cells of `grid` (cuda on a tie); None if none covers any."""
    cells = [c.config for c in expand(grid)]
    covered = {kind: sum(_pick(records, cfg, kind) is not None for cfg in cells) for kind in ("cuda", "cpu")}
    best = max(covered, key=lambda kind: covered[kind])  # cuda first: max keeps the first of equals
    return best if covered[best] else None


def estimate_grid(grid: GridSpec, records: list[dict[str, Any]], device: str | None = None, pack: int = 1
                  ) -> list[SetupEstimate]:
    """Per dataset x setup of `grid`: samples, evaluated clips and hours (folds trained in packs of `pack`), all on one
    kind of device (`device`, else the kind measured for most of the grid)."""
    if pack < 1:
        raise ValueError(f"pack: expected a number of folds >= 1, got {pack}")
    device = device or _device_type(grid, records)
    out: dict[tuple[str, str], SetupEstimate] = {}
    cells: dict[tuple[str, str, str], list[float]] = {}  # each cell's measured folds' hours, in fold order
    for cell in expand(grid):
        cfg = cell.config
        est = out.setdefault((cell.dataset, cell.setup), SetupEstimate(cell.dataset, cell.setup, cfg.model))
        work = fold_work(cfg, cell.fold)
        est.folds += 1
        est.train_samples += work.train_samples
        est.eval_clips += work.eval_clips + work.fgsm_clips
        rec = _pick(records, cfg, device, pack) if pack > 1 else None
        if pack > 1 and rec is None:
            est.pack_unmeasured.add(cfg.model)
        rec = rec or _pick(records, cfg, device)
        if rec is None or est.hours is None:
            est.hours = None
            est.unmeasured.add(f"{cfg.model}/{cfg.optim.precision}/{'aug' if cfg.augment.scale or cfg.augment.gain else 'plain'}")
            continue
        est.devices.add(str(rec.get("device_name") or rec["device"]))
        est.device_type = rec["device"]
        eval_rate = rec.get("eval_clips_per_s") or rec["full_samples_per_s"] / 10
        hours = (work.train_samples / rec["full_samples_per_s"] + (work.eval_clips + work.fgsm_clips) / eval_rate) / 3600
        est.fold_hours.append(hours)
        cells.setdefault((cell.dataset, cell.setup, cell.strategy), []).append(hours)
        est.hours += hours
    for (dataset, setup, _), hours in cells.items():  # a pack holds one device for all its folds
        out[(dataset, setup)].task_hours += [sum(hours[i] for i in p) for p in split_folds(range(len(hours)), pack)]
    return list(out.values())


def wall_hours(rows: list[SetupEstimate], devices: int) -> float:
    """Hours until the measured folds of `rows` are done on `devices` devices at once: each task (a fold, or a pack
    of folds) on one device, the longest first, each to the device free soonest."""
    free = [0.0] * max(devices, 1)
    for hours in sorted((h for r in rows for h in r.task_hours), reverse=True):
        heapq.heappush(free, heapq.heappop(free) + hours)
    return max(free)


def format_estimate(grid_name: str, rows: list[SetupEstimate], max_gpus: int | None = None) -> str:
    """The estimate as a plain-text table with a total line naming the device(s) the figures came from; with
    `max_gpus`, the wall-clock time of the measured folds on that many devices."""
    lines = [f"{'dataset':<13} {'setup':<15} {'folds':>5} {'training samples':>17} {'eval clips':>11} {'hours':>9}"]
    for r in rows:
        hours = f"{r.hours:9.1f}" if r.hours is not None else "        —"
        lines.append(f"{r.dataset:<13} {r.setup:<15} {r.folds:>5} {r.train_samples:>17,} {r.eval_clips:>11,} {hours}")
    known = [r.hours for r in rows if r.hours is not None]
    devices = sorted({d for r in rows for d in r.devices})
    total = f"{sum(known):9.1f}" if known else "        —"
    lines.append(f"{'total':<29} {sum(r.folds for r in rows):>5} {sum(r.train_samples for r in rows):>17,} "
                 f"{sum(r.eval_clips for r in rows):>11,} {total}")
    missing = sorted({m for r in rows for m in r.unmeasured})
    if not known:  # nothing measured: no number at all, never a 0.0 that reads as "free"
        lines.append(f"grid {grid_name}: device-hours unknown: no throughput measured for {', '.join(missing)}")
    else:
        where = " and ".join(devices) if devices else "no measured device"
        unit = "GPU-hours" if all(r.device_type == "cuda" for r in rows if r.hours is not None) else "device-hours"
        lines.append(f"grid {grid_name}: {'at least ' if missing else ''}{sum(known):,.1f} {unit} on {where} "
                     "(one device, one fold at a time)")
        if max_gpus:
            folds, tasks = sum(len(r.fold_hours) for r in rows), sum(len(r.task_hours) for r in rows)
            what = "each fold" if tasks == folds else f"in {tasks} packs, each pack"
            lines.append(f"with --max-gpus {max_gpus}: about {wall_hours(rows, max_gpus):,.1f} h wall-clock for the "
                         f"{folds} measured folds ({what} on one device, {min(max_gpus, tasks)} at a time, the "
                         "longest first)")
    unpacked = sorted({m for r in rows for m in r.pack_unmeasured})
    if unpacked:
        lines.append(f"packs not measured for {', '.join(unpacked)}: their folds' one-at-a-time figures are used "
                     "(benchmarks/bench_throughput.py --pack K measures them)")
    if missing:
        lines.append(f"not measured{' (hours left out of the total)' if known else ''}: {', '.join(missing)}; "
                     "run benchmarks/bench_throughput.py --save FILE.json and pass --throughput FILE.json")
    return "\n".join(lines)
