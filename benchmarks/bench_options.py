"""The GPU-speed options of `optim` (precision, channels_last, compile) and cuDNN's autotuner against the plain step.

Usage:
    python benchmarks/bench_options.py [--models envnet_v2 ...] [--batch 32] [--repeats 5] [--threads 1]
                                       [--device auto|cpu|cuda] [--no-compile]

For each model: the same weights in every variant, InterMix training steps on one batch already on
the device (the mixer's draw, levels and phase shift included), rounds interleaved so drift hits
every variant alike; it prints each variant's median step time and its ratio to the plain fp32
step, and the largest logit difference from the plain model on one batch (the options must not
change results beyond float tolerance). Compilation time is excluded (a warm-up step per variant)
and printed apart. An option becomes a default only after this benchmark shows it faster on the
device that runs the grid.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from intermix_core.config import STRATEGIES, OptimConfig  # noqa: E402
from intermix_core.method.devices import resolve_device  # noqa: E402
from intermix_core.method.mixing import Mixer  # noqa: E402
from intermix_core.method.optim import make_optimizer  # noqa: E402
from intermix_core.method.train import training_step  # noqa: E402
from intermix_core.models import create_model, list_models, model_class, speed_up  # noqa: E402

NUM_CLASSES = 50
VARIANTS = {  # name: (precision, channels_last, compile, cudnn_benchmark)
    "fp32": ("fp32", False, False, False),
    "bf16": ("bf16", False, False, False),
    "channels_last": ("fp32", True, False, False),
    "compile": ("fp32", False, True, False),
    "bf16+compile": ("bf16", False, True, False),
    # cuDNN's autotuner (torch.backends.cudnn.benchmark): times each convolution's algorithms once per input shape
    # and keeps the fastest. Not yet an option of `optim`: on the H200 (2026-12-04) bf16 was no faster than fp32
    # and compile gained nothing, which points at the convolution algorithms cuDNN picks without it.
    "cudnn_benchmark": ("fp32", False, False, True),
    "bf16+cudnn_benchmark": ("bf16", False, False, True),
    "channels_last+bf16+cudnn_benchmark": ("bf16", True, False, True),
}


def sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, device: torch.device, batch: int, repeats: int, variants: list[str]) -> list[str]:
    """Rows of the table for one model."""
    cls = model_class(name)
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(batch, cls.input_length, generator=gen, device=device) * 2 - 1) * 0.1
    y = torch.arange(batch, device=device) % NUM_CLASSES
    base = create_model(name, NUM_CLASSES).to(device)
    with torch.no_grad():
        reference = base.eval()(x)  # the plain model's logits, once: every variant starts from these weights
    runs, compile_s, drift = {}, {}, {}
    for v in variants:
        precision, channels_last, compiled, autotune = VARIANTS[v]
        torch.backends.cudnn.benchmark = autotune
        model = speed_up(copy.deepcopy(base), channels_last=channels_last, compile_stages=compiled)
        opt = make_optimizer(model.parameters(), OptimConfig(update_rule="pytorch"), 1e-3)
        mixer = Mixer(STRATEGIES["intermix"], NUM_CLASSES, cls.sample_rate, seed=0)
        with torch.no_grad():  # before any update: the same weights, so only numerics differ
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model.eval()(x).float()
            drift[v] = (out - reference).abs().max().item()
        model.train()
        t0 = time.perf_counter()
        training_step(model, opt, mixer, x, y, precision)  # warm-up (and compilation of the training graph)
        sync(device)
        compile_s[v] = time.perf_counter() - t0
        runs[v] = (model, opt, mixer, precision, [])
    for _ in range(repeats):
        for v, (model, opt, mixer, precision, times) in runs.items():
            torch.backends.cudnn.benchmark = VARIANTS[v][3]
            sync(device)
            t0 = time.perf_counter()
            training_step(model, opt, mixer, x, y, precision)
            sync(device)
            times.append(time.perf_counter() - t0)
    torch.backends.cudnn.benchmark = False
    plain = statistics.median(runs["fp32"][4])
    rows = []
    for v, (_, _, _, _, times) in runs.items():
        t = statistics.median(times)
        rows.append(f"{name:<11} {v:<34} {t:>9.3f} {batch / t:>10.1f} {plain / t:>8.2f}x {drift[v]:>11.2e} "
                    f"{compile_s[v]:>9.1f}")
    return rows


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = [v for v in VARIANTS if not (args.no_compile and VARIANTS[v][2])]
    print(f"device {device}; batch {args.batch}; median of {args.repeats} interleaved rounds; InterMix steps")
    print(f"{'model':<11} {'variant':<34} {'s/step':>9} {'samples/s':>10} {'vs fp32':>9} {'max |Δlogit|':>11} "
          f"{'warm-up s':>9}")
    for name in args.models:
        for row in bench_model(name, device, args.batch, args.repeats, variants):
            print(row, flush=True)


if __name__ == "__main__":
    main()
