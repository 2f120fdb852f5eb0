"""Training-step time of every strategy relative to Standard, side by side in one run.

Usage: python benchmarks/bench_mixing.py [--models m18 piczak_cnn ...] [--batch 32] [--repeats 10]

For each model the strategies' steps (forward + backward + SGD step, the mixer's draw included)
are interleaved round-robin on the same model and batch, so drift of the machine's speed hits all
of them alike; each strategy's ratio is the median over rounds of (its step time / Standard's step
time in the same round). Target: InterMix <= 1.10x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from intermix_core.audio import a_weighted_level_db
from intermix_core.config import STRATEGIES
from intermix_core.mixing import Mixer
from intermix_core.models import create_model, list_models, model_class
from intermix_core.train import training_step

STRATS = ["standard", "mixup", "bc", "speechmix", "intermix", "intermix_official"]


def step_time(model, opt, mixer: Mixer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one training step of `mixer`'s strategy (the draw included)."""
    t0 = time.perf_counter()
    training_step(model, opt, mixer, x, y)
    return time.perf_counter() - t0


def bench_model(name: str, batch: int, repeats: int, num_classes: int = 10) -> tuple[float, dict[str, float]]:
    """(median Standard step seconds, median per-round ratio to Standard per strategy) for one model."""
    torch.manual_seed(0)
    cls = model_class(name)
    model = create_model(name, num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    x = torch.randn(batch, cls.input_length) * 0.1
    y = torch.arange(batch) % num_classes
    mixers = {s: Mixer(STRATEGIES[s], num_classes, cls.sample_rate, seed=0) for s in STRATS}
    times: dict[str, list[float]] = {s: [] for s in STRATS}
    for s in STRATS:  # warm-up
        step_time(model, opt, mixers[s], x, y)
    for _ in range(repeats):
        for s in STRATS:
            times[s].append(step_time(model, opt, mixers[s], x, y))
    ratios = {s: statistics.median(t / b for t, b in zip(v, times["standard"])) for s, v in times.items()}
    return statistics.median(times["standard"]), ratios


def main() -> None:
    """Print a table of step times and ratios to Standard for the chosen models."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list_models())
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.repeats} interleaved rounds")
    print(f"{'model':<12} {'standard s/step':>15} " + " ".join(f"{s:>17}" for s in STRATS[1:]) + "   levels ms")
    for name in args.models:
        standard, ratio = bench_model(name, args.batch, args.repeats)
        cls = model_class(name)
        x = torch.randn(args.batch, cls.input_length) * 0.1
        t0 = time.perf_counter()
        for _ in range(5):
            a_weighted_level_db(x, cls.sample_rate)
        levels_ms = (time.perf_counter() - t0) / 5 * 1e3
        ratios = " ".join(f"{ratio[s]:>16.3f}x" for s in STRATS[1:])
        print(f"{name:<12} {standard:>15.4f} {ratios}   {levels_ms:8.2f}", flush=True)


if __name__ == "__main__":
    main()
