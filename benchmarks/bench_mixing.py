"""Training-step time of every strategy relative to Standard, side by side in one run.

Usage: python benchmarks/bench_mixing.py [--models m18 piczak_cnn ...] [--batch 32] [--repeats 20] [--device cuda]

For each model the strategies' steps (forward + backward + update, the mixer's draw, the input phase
shift and the levels included) are interleaved round-robin on the same model and batch, so drift of
the machine's speed hits all of them alike; each strategy's ratio is the median over rounds of (its
step time / Standard's step time in the same round), printed with the interquartile range of those
per-round ratios. Target: InterMix <= 1.05x. `intermix_no_rotation` shows what the phase shift costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from intermix_core.config import STRATEGIES
from intermix_core.method.audio import a_weighted_level_db
from intermix_core.method.devices import resolve_device
from intermix_core.method.mixing import Mixer
from intermix_core.method.train import training_step
from intermix_core.models import create_model, list_models, model_class

STRATS = ["standard", "mixup", "bc", "speechmix", "intermix", "intermix_no_rotation", "intermix_official"]


def step_time(model, opt, mixer: Mixer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one training step of `mixer`'s strategy (the draw included), device work included."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    training_step(model, opt, mixer, x, y)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def bench_model(
    name: str, batch: int, repeats: int, device: torch.device, num_classes: int = 10,
) -> tuple[float, dict[str, tuple[float, float, float]]]:
    """(median Standard step seconds, per strategy (median, q25, q75) of its per-round ratio to Standard)."""
    torch.manual_seed(0)
    cls = model_class(name)
    model = create_model(name, num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    x = torch.randn(batch, cls.input_length, device=device) * 0.1
    y = torch.arange(batch, device=device) % num_classes
    mixers = {s: Mixer(STRATEGIES[s], num_classes, cls.sample_rate, seed=0) for s in STRATS}
    times: dict[str, list[float]] = {s: [] for s in STRATS}
    for s in STRATS:  # warm-up
        step_time(model, opt, mixers[s], x, y)
    for _ in range(repeats):
        for s in STRATS:
            times[s].append(step_time(model, opt, mixers[s], x, y))
    ratios = {}
    for s, v in times.items():
        per_round = [t / b for t, b in zip(v, times["standard"])]
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else [per_round[0]] * 3
        ratios[s] = (statistics.median(per_round), q[0], q[2])
    return statistics.median(times["standard"]), ratios


def main() -> None:
    """Print a table of step times and ratios to Standard (median [q25-q75]) for the chosen models."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list_models())
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median [q25-q75] of {args.repeats} interleaved rounds")
    print(f"{'model':<12} {'standard s/step':>15} " + " ".join(f"{s:>22}" for s in STRATS[1:]) + "   levels ms")
    for name in args.models:
        standard, ratio = bench_model(name, args.batch, args.repeats, device)
        cls = model_class(name)
        x = torch.randn(args.batch, cls.input_length, device=device) * 0.1
        t0 = time.perf_counter()
        for _ in range(5):
            a_weighted_level_db(x, cls.sample_rate)
        if x.is_cuda:
            torch.cuda.synchronize(device)
        levels_ms = (time.perf_counter() - t0) / 5 * 1e3
        cells = " ".join(f"{m:>8.3f}x [{lo:.3f}-{hi:.3f}]" for m, lo, hi in (ratio[s] for s in STRATS[1:]))
        print(f"{name:<12} {standard:>15.4f} {cells}   {levels_ms:8.2f}", flush=True)


if __name__ == "__main__":
    main()
