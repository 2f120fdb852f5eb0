"""What the training loop costs per epoch besides training: tracking, checkpoints and store sync, side by side.

Usage: python benchmarks/bench_overhead.py [--epochs 20 80] [--repeats 3] [--threads 1]

One tiny fold (PiczakCNN on 10 + 10 real demo clips, one step per epoch: an epoch as short as a
GPU epoch of ESC-10) is trained three ways, each at two epoch counts, in interleaved rounds:

- `off`: `train_fold` with no tracking and no store, a checkpoint only after the last epoch;
- `defaults`: `train_step` as the KFP train component runs it, against a real local MLflow server
  (started here) and a local store, at the default cadences (checkpoints every 60 s of wall time,
  epoch metrics and takeover checks every 5 s in the background, store sync every 60 s);
- `per-epoch`: the same with the old cadences (an MLflow check and send at every epoch, a checkpoint
  every 5 epochs).

Each cost is the slope between the two epoch counts (median over rounds), so start-up (process,
MLflow runs, the final evaluation and checkpoint) drops out; the bookkeeping cost is a way's slope
minus `off`'s. Target: defaults <= 5 ms per epoch. The 10-crop evaluation runs once at the end in
every way (its cadence, `eval_every`, is part of the protocol, not bookkeeping).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the tests' real servers
from servers import mlflow_server  # noqa: E402

from intermix_core.config import ExperimentConfig, parse_config  # noqa: E402
from intermix_core.data import prepare_dataset  # noqa: E402
from intermix_core.method.train import train_fold  # noqa: E402
from intermix_core.models import model_class  # noqa: E402
from intermix_core.run.steps import train_step  # noqa: E402
from intermix_core.testing import demo_subset  # noqa: E402
from intermix_core.tracking.tracker import SYNC_ENV  # noqa: E402

MODEL = "piczak_cnn"
WAYS = ("off", "defaults", "per-epoch")


def config(epochs: int, way: str) -> ExperimentConfig:
    """The tiny fold: all 10 training clips in one batch, evaluation only after the last epoch."""
    cadence = {"checkpoint_every": 5} if way == "per-epoch" else {}
    if way == "off":
        cadence = {"checkpoint_every_s": None}
    return parse_config({
        "dataset": "esc10", "model": MODEL, "strategy": "intermix", "seed": 1, "num_crops": 2,
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.002, "eval_every": epochs, **cadence},
    })


def run_once(way: str, epochs: int, data: Path, work: Path, tracking_uri: str) -> float:
    """Wall seconds of one fold trained `way` for `epochs` epochs, into a fresh folder (and store prefix)."""
    out = Path(tempfile.mkdtemp(dir=work))
    cfg = config(epochs, way)
    t0 = time.perf_counter()
    if way == "off":
        train_fold(cfg, data, 1, out / "fold", progress=False, device="cpu")
    else:
        os.environ[SYNC_ENV] = "0" if way == "per-epoch" else ""
        train_step(cfg.model_dump_json(), data, 1, out / "fold", grid_id=f"bench-{out.name}", tracking_uri=tracking_uri,
                   checkpoint_root=str(out / "store"), device="cpu")
    return time.perf_counter() - t0


def slopes(times: dict[tuple[str, int], list[float]], low: int, high: int) -> dict[str, float]:
    """Per way: median over rounds of (time at `high` epochs - time at `low`) / (high - low), in seconds per epoch."""
    out = {}
    for way in WAYS:
        per_round = [(h - lo) / (high - low) for lo, h in zip(times[(way, low)], times[(way, high)])]
        out[way] = statistics.median(per_round)
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the per-epoch cost of each way and the bookkeeping cost against `off`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--epochs", type=int, nargs=2, default=[20, 80], metavar=("LOW", "HIGH"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    low, high = sorted(args.epochs)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="intermix-bench-overhead-") as tmp:
        work = Path(tmp)
        src = demo_subset(work / "src", per_class_per_fold=1, folds=(1, 2), seconds=2.0)
        data = work / "prepared"
        prepare_dataset(src, "esc10", data, model_class(MODEL).sample_rate, progress=False)
        with mlflow_server(work / "mlflow") as server:
            times: dict[tuple[str, int], list[float]] = {(w, n): [] for w in WAYS for n in (low, high)}
            run: Callable[[str, int], float] = lambda w, n: run_once(w, n, data, work, server.url)  # noqa: E731
            for w in WAYS:  # warm-up: imports, first MLflow requests, allocator
                run(w, 2)
            for r in range(args.repeats):
                for n in (low, high):
                    for w in WAYS:
                        times[(w, n)].append(run(w, n))
                print(f"round {r + 1}/{args.repeats}: " + ", ".join(
                    f"{w} {times[(w, low)][-1]:.2f}/{times[(w, high)][-1]:.2f} s" for w in WAYS), flush=True)
    per_epoch = slopes(times, low, high)
    base = per_epoch["off"]
    print(f"\nper-epoch cost, slope between {low} and {high} epochs, median of {args.repeats} interleaved rounds, "
          f"{args.threads} thread(s), {MODEL} on 10 training clips:")
    print(f"{'way':<10} {'ms/epoch':>9} {'bookkeeping ms/epoch':>21} {'x off':>7}")
    for w in WAYS:
        print(f"{w:<10} {1000 * per_epoch[w]:>9.2f} {1000 * (per_epoch[w] - base):>21.2f} {per_epoch[w] / base:>7.2f}")
    verdict = "meets" if 1000 * (per_epoch["defaults"] - base) <= 5.0 else "misses"
    print(f"defaults {verdict} the target of at most 5 ms of bookkeeping per epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
