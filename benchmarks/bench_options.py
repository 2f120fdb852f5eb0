"""The GPU-speed options of `optim` (precision, channels_last, compile, cudnn_benchmark) against the plain step.

Usage:
    python benchmarks/bench_options.py [--models envnet_v2 ...] [--batch 32] [--repeats 5] [--threads 1]
                                       [--device auto|cpu|cuda] [--no-compile] [--variants V ...] [--save FILE]
                                       [--burst N]

For each model: the same weights in every variant, InterMix training steps on one batch already on
the device (the mixer's draw, levels and phase shift included), each variant in a process of its own
(cuDNN's per-process plan cache would otherwise serve one variant's plans to the next), rounds
interleaved so drift hits every variant alike, each round `--burst` steps back to back (8 on a GPU);
it prints each variant's median step time and its ratio to the plain fp32 step, and the largest
logit difference from the plain model on one batch (the options must not change results beyond
float tolerance). Compilation time is excluded (a warm-up step per variant)
and printed apart. An option becomes a default only after this benchmark shows it faster on the
device that runs the grid. `--save` also records, per model, the pick: the fastest variant that keeps float32
arithmetic and compiles nothing, when it beats fp32 by PICK_MARGIN, as `--set` arguments for `intermix study`
(scripts/gpu_study.sh tunes its study this way).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from intermix_core.config import EXECUTION_OPTIONS, STRATEGIES, OptimConfig  # noqa: E402
from intermix_core.method.devices import default_burst, resolve_device, time_per_call  # noqa: E402
from intermix_core.method.mixing import Mixer  # noqa: E402
from intermix_core.method.optim import make_optimizer  # noqa: E402
from intermix_core.method.train import training_step  # noqa: E402
from intermix_core.models import create_model, list_models, model_class, speed_up  # noqa: E402

NUM_CLASSES = 50
# name: the optim options it sets (the rest stay at their defaults: fp32, no channels-last, no compile, no autotuner)
VARIANTS: dict[str, dict[str, object]] = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16+compile": {"precision": "bf16", "compile": True},
    # cuDNN's autotuner (optim.cudnn_benchmark): times each convolution's algorithms once per input shape and keeps
    # the fastest. On the H200 (2026-12-04) bf16 was no faster than fp32 and compile gained nothing, which points
    # at the convolution algorithms cuDNN picks without it.
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "channels_last+cudnn_benchmark": {"channels_last": True, "cudnn_benchmark": True},
    "bf16+cudnn_benchmark": {"precision": "bf16", "cudnn_benchmark": True},
    "channels_last+bf16+cudnn_benchmark": {"precision": "bf16", "channels_last": True, "cudnn_benchmark": True},
}
# what --save's pick may choose: execution options only (bf16 is a precision change), and no compilation (each study
# worker would pay its warm-up again)
PICKABLE = [v for v, o in VARIANTS.items() if set(o) <= set(EXECUTION_OPTIONS) - {"compile"}]
PICK_MARGIN = 1.03  # a variant replaces plain fp32 only when at least this much faster (medians of a few steps)


def pick(ratios: dict[str, float], margin: float = PICK_MARGIN) -> dict[str, object]:
    """The fastest pickable variant among `ratios` (speed relative to fp32), if it beats fp32 by `margin`; else fp32.

    Returns {"variant", "speedup", "set"}: "set" holds the `--set optim.KEY=VALUE` arguments that select it.
    """
    best = max((v for v in ratios if v in PICKABLE), key=lambda v: ratios[v], default="fp32")
    if ratios.get(best, 1.0) < margin:
        best = "fp32"
    chosen = VARIANTS[best]
    return {"variant": best, "speedup": ratios.get(best, 1.0),
            "set": [f"optim.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in chosen.items()]}


def _variant_worker(conn: Connection, name: str, variant: str, device: str, batch: int, threads: int | None) -> None:
    """One variant in a process of its own: set up, report logits and warm-up, then time the steps asked for.

    A process per variant, because cuDNN keeps the plan it chose per convolution shape for the life of the process
    and looks it up before the autotuner's switch (the key has no `benchmark` field: ATen's cudnn/Conv_v8.cpp,
    run_single_conv): in one process the first variant's plans would serve every later one of the same shapes.
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cls = model_class(name)
    gen = torch.Generator().manual_seed(0)
    x = ((torch.rand(batch, cls.input_length, generator=gen) * 2 - 1) * 0.1).to(dev)
    y = (torch.arange(batch) % NUM_CLASSES).to(dev)
    torch.manual_seed(0)  # the same initial weights in every process
    o = OptimConfig(**VARIANTS[variant])  # type: ignore[arg-type]
    model = speed_up(create_model(name, NUM_CLASSES).to(dev), channels_last=o.channels_last, compile_stages=o.compile,
                     cudnn_benchmark=o.cudnn_benchmark)
    with torch.no_grad():  # before any update: the same weights as every other variant, so only numerics differ
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=o.precision == "bf16"):
            logits = model.eval()(x).float().cpu()
    opt = make_optimizer(model.parameters(), OptimConfig(update_rule="pytorch"), 1e-3)
    mixer = Mixer(STRATEGIES["intermix"], NUM_CLASSES, cls.sample_rate, seed=0)
    model.train()

    def step() -> object:
        return training_step(model, opt, mixer, x, y, o.precision)

    conn.send((logits, time_per_call(step, dev)))  # warm-up: compilation, cuDNN's algorithm choice
    while (steps := conn.recv()) is not None:  # seconds per step over `steps` steps back to back
        conn.send(time_per_call(step, dev, steps))
    conn.close()


def bench_model(name: str, device: torch.device, batch: int, repeats: int, variants: list[str],
                threads: int | None = None, burst: int = 1) -> list[dict[str, object]]:
    """One record per variant for one model: median step time, its ratio to fp32, logit change, warm-up."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    workers: dict[str, tuple[Any, Connection]] = {}
    logits, warmup, times = {}, {}, {v: [] for v in variants}
    try:
        for v in variants:  # set up one at a time, so warm-ups do not overlap
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_variant_worker, args=(there, name, v, str(device), batch, threads), daemon=True)
            proc.start()
            workers[v] = (proc, here)
            logits[v], warmup[v] = here.recv()
        for _ in range(repeats):  # rounds interleaved, one variant running at a time: drift hits every variant alike
            for v, (_, conn) in workers.items():
                conn.send(burst)
                times[v].append(conn.recv())
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    median = {v: statistics.median(t) for v, t in times.items()}
    return [{"model": name, "variant": v, "seconds_per_step": median[v], "samples_per_s": batch / median[v],
             "vs_fp32": median["fp32"] / median[v],
             "max_logit_change": (logits[v] - logits["fp32"]).abs().max().item(), "warmup_seconds": warmup[v]}
            for v in variants]


def format_row(r: dict[str, object]) -> str:
    """One line of the printed table."""
    return (f"{r['model']:<11} {r['variant']:<34} {r['seconds_per_step']:>9.3f} {r['samples_per_s']:>10.1f} "
            f"{r['vs_fp32']:>8.2f}x {r['max_logit_change']:>11.2e} {r['warmup_seconds']:>9.1f}")


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                        help=f"these variants only (fp32 is always run): {', '.join(VARIANTS)}")
    parser.add_argument("--burst", type=int, help="steps timed back to back per round, one device sync at each end "
                        "(default: 8 on a GPU, as a training loop runs; 1 on a CPU)")
    parser.add_argument("--save", metavar="FILE.json", help="write the rows and, per model, the pick: the fastest "
                        f"float32, uncompiled variant if >= {PICK_MARGIN}x fp32, as --set arguments")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = ["fp32"] + [v for v in (args.variants or VARIANTS) if v != "fp32"
                           and not (args.no_compile and VARIANTS[v].get("compile"))]
    burst = args.burst or default_burst(device)
    print(f"device {device}; batch {args.batch}; median of {args.repeats} interleaved rounds of {burst} InterMix "
          "step(s) back to back")
    print(f"{'model':<11} {'variant':<34} {'s/step':>9} {'samples/s':>10} {'vs fp32':>9} {'max |Δlogit|':>11} "
          f"{'warm-up s':>9}")
    records, picks = [], {}
    for name in args.models:
        rows = bench_model(name, device, args.batch, args.repeats, variants, args.threads, burst)
        for r in rows:
            print(format_row(r), flush=True)
        records += rows
        picks[name] = pick({str(r["variant"]): float(r["vs_fp32"]) for r in rows})  # type: ignore[arg-type]
        print(f"{name}: pick {picks[name]['variant']} ({picks[name]['speedup']:.2f}x fp32)", flush=True)
    if args.save:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        Path(args.save).write_text(json.dumps({"device": str(device), "device_name": device_name, "batch": args.batch,
                                               "rows": records, "pick": picks}, indent=2) + "\n")


if __name__ == "__main__":
    main()
