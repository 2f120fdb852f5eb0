"""Training-step time of every strategy relative to Standard, side by side in one run.

Usage: python benchmarks/bench_mixing.py [--models m18 piczak_cnn ...] [--batch 32] [--repeats 20] [--device cuda]
                                         [--burst N]

For each model the strategies' steps (forward + backward + update, the mixer's draw, the input phase
shift and the levels included) are interleaved round-robin on the same model and batch, so drift of
the machine's speed hits all of them alike; each strategy's ratio is the median over rounds of (its
step time / Standard's step time in the same round), printed with the interquartile range of those
per-round ratios. Target: InterMix <= 1.05x. `intermix_no_rotation` shows what the phase shift costs.
A round times `--burst` steps back to back with the device synchronized only before and after (8 on a GPU by
default, as a training loop runs them: the host launches a step's small mixing kernels while the device still runs
the previous step; a wait after every step would count their launch time as the strategy's cost).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from intermix_core.config import STRATEGIES
from intermix_core.method.audio import a_weighted_level_db
from intermix_core.method.devices import default_burst, resolve_device, time_per_call
from intermix_core.method.mixing import Mixer
from intermix_core.method.train import training_step
from intermix_core.models import create_model, list_models, model_class

STRATS = ["standard", "mixup", "bc", "speechmix", "intermix", "intermix_no_rotation", "intermix_official"]


def bench_model(
    name: str, batch: int, repeats: int, device: torch.device, num_classes: int = 10, burst: int = 1,
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
    def step(s: str) -> Callable[[], object]:
        return lambda: training_step(model, opt, mixers[s], x, y)  # the draw, phase shift and levels included

    for s in STRATS:  # warm-up
        time_per_call(step(s), device)
    for _ in range(repeats):
        for s in STRATS:
            times[s].append(time_per_call(step(s), device, burst))
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
    ap.add_argument("--burst", type=int, help="steps timed back to back per round, one device sync at each end "
                    "(default: 8 on a GPU, as a training loop runs; 1 on a CPU)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    burst = args.burst or default_burst(device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median [q25-q75] of {args.repeats} interleaved rounds of {burst} step(s) back to back")
    print(f"{'model':<12} {'standard s/step':>15} " + " ".join(f"{s:>22}" for s in STRATS[1:]) + "   levels ms")
    for name in args.models:
        standard, ratio = bench_model(name, args.batch, args.repeats, device, burst=burst)
        cls = model_class(name)
        x = torch.randn(args.batch, cls.input_length, device=device) * 0.1
        levels_ms = time_per_call(lambda: a_weighted_level_db(x, cls.sample_rate), device, 5) * 1e3
        cells = " ".join(f"{m:>8.3f}x [{lo:.3f}-{hi:.3f}]" for m, lo, hi in (ratio[s] for s in STRATS[1:]))
        print(f"{name:<12} {standard:>15.4f} {cells}   {levels_ms:8.2f}", flush=True)


if __name__ == "__main__":
    main()
