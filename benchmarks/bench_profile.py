"""Where a training step's time goes: the operators and device kernels of one model's step, ranked, per strategy.

Usage:
    python benchmarks/bench_profile.py [--models envnet envnet_v2] [--strategies standard intermix]
                                       [--precision fp32|bf16] [--batch 32] [--steps 10] [--top 12]
                                       [--cudnn-benchmark] [--device auto|cpu|cuda] [--threads N]

For each model and strategy: warm-up steps (compilation, cuDNN's algorithm choice), then `--steps` training steps
(the default update rule, the mixer's draw, levels and phase shift included) under torch.profiler. It prints the
wall time per step, the device's busy time per step and their ratio (on a GPU, a ratio well under 1 means the
device waits for the host: launches, syncs; near 1 means the kernels themselves are the cost), then the `--top`
operators by their own device time per step (CPU time on a CPU) with their share. Nothing is compared against a
threshold: it is the first look on a new device, before bench_options.py tries a remedy. A second line gives the
model's floating-point work per sample (torch's FlopCounterMode: matrix products and
convolutions, forward and backward) and the rate the step achieves, to hold against the device's peak.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from intermix_core.config import STRATEGIES, OptimConfig  # noqa: E402
from intermix_core.method.devices import resolve_device, synchronize  # noqa: E402
from intermix_core.method.mixing import Mixer  # noqa: E402
from intermix_core.method.optim import make_optimizer  # noqa: E402
from intermix_core.method.train import training_step  # noqa: E402
from intermix_core.models import create_model, model_class, speed_up  # noqa: E402

NUM_CLASSES = 10
WARMUP_STEPS = 5


@functools.cache  # the same for every strategy and device
def flops_per_sample(name: str) -> float:
    """Floating-point operations of one sample's forward and backward pass through the model (two samples on the CPU).

    Counted apart from the timed steps: the mixing's few elementwise operations are not counted anyway, and a
    dispatch mode around a step would make its compiled functions fall back to eager.
    """
    cls = model_class(name)
    model = create_model(name, NUM_CLASSES).train()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, cls.input_length)).sum().backward()
    return counter.get_total_flops() / 2


def profile_step(name: str, strategy: str, device: torch.device, precision: str, batch: int, steps: int,
                 top: int, cudnn_benchmark: bool = False) -> list[str]:
    """The report's lines for one model and strategy."""
    cls = model_class(name)
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(batch, cls.input_length, generator=gen, device=device) * 2 - 1) * 0.1
    y = torch.arange(batch, device=device) % NUM_CLASSES
    model = speed_up(create_model(name, NUM_CLASSES).to(device).train(), cudnn_benchmark=cudnn_benchmark)
    opt = make_optimizer(model.parameters(), OptimConfig(), 1e-3)
    mixer = Mixer(STRATEGIES[strategy], NUM_CLASSES, cls.sample_rate, seed=0)
    for _ in range(WARMUP_STEPS):
        training_step(model, opt, mixer, x, y, precision)
    synchronize(device)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            training_step(model, opt, mixer, x, y, precision)
        synchronize(device)
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    # on a GPU the kernels themselves (an operator's device time is its kernels' again); on a CPU each operator's own
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    kept = (e for e in events if getattr(e, attr, 0) > 0 and (not on_gpu or e.device_type == DeviceType.CUDA))
    rows = sorted(kept, key=lambda e: getattr(e, attr), reverse=True)
    busy = sum(getattr(e, attr) for e in rows) / 1e3 / steps  # ms per step (kernels' own time, summed)
    what = "device kernels busy" if on_gpu else "CPU operators' own time"
    lines = [f"{name} {strategy} {precision}, batch {batch}: {wall * 1e3:.2f} ms per step ({batch / wall:,.0f} samples/s); "
             f"{what} {busy:.2f} ms per step ({busy / (wall * 1e3):.0%} of the wall time)",
             f"  {flops_per_sample(name) / 1e9:.2f} GFLOP per sample (forward, backward; matmuls and convolutions): "
             f"{flops_per_sample(name) * batch / wall / 1e12:.2f} TFLOP/s achieved"]
    for e in rows[:top]:
        ms = getattr(e, attr) / 1e3 / steps
        lines.append(f"  {ms:8.3f} ms {ms / busy if busy else 0:6.1%} {e.count / steps:7.1f}/step  {e.key[:90]}")
    return lines


def main() -> None:
    """Parse arguments, profile, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["envnet", "envnet_v2"])
    parser.add_argument("--strategies", nargs="*", default=["standard", "intermix"], choices=sorted(STRATEGIES))
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (autotuner)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; torch {torch.__version__}; cudnn.benchmark {args.cudnn_benchmark}; "
          f"{args.steps} profiled steps after {WARMUP_STEPS} warm-up steps")
    for model in args.models:
        for strategy in args.strategies:
            print("\n".join(profile_step(model, strategy, device, args.precision, args.batch, args.steps, args.top,
                                          args.cudnn_benchmark)), flush=True)


if __name__ == "__main__":
    main()
