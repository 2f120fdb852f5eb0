"""Chainer's NesterovAG update: the foreach passes against the compiled kernel chain, side by side in one run.

Usage:
    python benchmarks/bench_update.py [--models envnet_v2 envnet] [--packs 1 4] [--repeats 7] [--threads N]
                                      [--device auto|cpu|cuda] [--burst N] [--save FILE.json]

For each model and pack size K: the parameters of K models (the optimizer of a pack holds every fold's
tensors in one group, `intermix_core.method.pack.make_pack_optimizer`), gradients and velocities of the
same shapes, and one `ChainerNesterovAG.step()` timed two ways in interleaved rounds:
- foreach: five in-place `torch._foreach` passes (INTERMIX_COMPILE=0), 14 sweeps over the parameters' size;
- compiled: one torch.compile'd chain (INTERMIX_COMPILE=1, the GPU's default), 5 sweeps;
It prints milliseconds per update, the bytes each form must move at least (sweeps x parameters x 4 bytes)
over its time (effective GB/s), the ratio foreach/compiled and the first compiled call's time (compilation;
paid once per process and pack layout), and the largest parameter difference after one step of each form
from the same state.
An update reads gradients that the backward pass leaves; here they are set once and reused, so the figures
are the update alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from intermix_core.method.devices import default_burst, device_name, resolve_device, time_per_call  # noqa: E402
from intermix_core.method.optim import ChainerNesterovAG  # noqa: E402
from intermix_core.models import create_model, list_models  # noqa: E402

NUM_CLASSES = 50
SWEEPS = {"foreach": 14, "compiled": 5}  # read+write passes over the parameters' size (module docstring)


def _optimizer(name: str, pack: int, device: torch.device) -> tuple[ChainerNesterovAG, list[torch.Tensor]]:
    """One optimizer over `pack` models' parameters, each with a fixed random gradient."""
    torch.manual_seed(0)
    params = [p for _ in range(pack) for p in create_model(name, NUM_CLASSES).to(device).parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return ChainerNesterovAG(params, lr=0.01, momentum=0.9, weight_decay=5e-4), params


def bench(name: str, pack: int, device: torch.device, repeats: int, burst: int) -> dict[str, object]:
    """Both forms of the update of `pack` x `name`'s parameters; one record."""
    forms: dict[str, tuple[ChainerNesterovAG, list[torch.Tensor]]] = {}
    first_s: dict[str, float] = {}
    for form in SWEEPS:
        os.environ["INTERMIX_COMPILE"] = "1" if form == "compiled" else "0"
        forms[form] = _optimizer(name, pack, device)
        first_s[form] = time_per_call(forms[form][0].step, device)  # compiles the compiled form
    failed = forms["compiled"][0]._fused_update.failed
    # one step each from the same state: the forms agree to float rounding (compared now: the foreach passes
    # leave g + wd theta in p.grad, which the timed steps below reuse, the compiled chain leaves p.grad as it was)
    diff = max((a - b).abs().max().item() for a, b in zip(forms["foreach"][1], forms["compiled"][1]))
    times: dict[str, list[float]] = {form: [] for form in SWEEPS}
    for _ in range(repeats):
        for form, (opt, _) in forms.items():
            os.environ["INTERMIX_COMPILE"] = "1" if form == "compiled" else "0"
            times[form].append(time_per_call(opt.step, device, burst))
    numel = sum(p.numel() for p in forms["foreach"][1])
    med = {form: statistics.median(t) for form, t in times.items()}
    return {
        "model": name, "pack": pack, "device": device.type, "device_name": device_name(device),
        "parameters": numel, "tensors": len(forms["foreach"][1]), "repeats": repeats, "burst": burst,
        "foreach_ms": 1e3 * med["foreach"], "compiled_ms": 1e3 * med["compiled"],
        "foreach_gb_per_s": SWEEPS["foreach"] * numel * 4 / med["foreach"] / 1e9,
        "compiled_gb_per_s": SWEEPS["compiled"] * numel * 4 / med["compiled"] / 1e9,
        "speedup": med["foreach"] / med["compiled"], "compile_s": first_s["compiled"], "compile_failed": failed,
        "first_step_max_diff": diff, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    """Parse the arguments, time each model and pack size, print a line each (and save the records)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["envnet_v2", "envnet"], choices=list_models())
    ap.add_argument("--packs", nargs="*", type=int, default=[1, 4])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    ap.add_argument("--burst", type=int, help="updates timed back to back per round (default: 8 on a GPU, 1 on a CPU)")
    ap.add_argument("--save", type=Path, help="write the records to this JSON file")
    args = ap.parse_args()
    if any(k < 1 for k in args.packs):
        ap.error(f"--packs {args.packs}: expected numbers of folds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    burst = args.burst or default_burst(device)
    print(f"device: {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    records = []
    for name in args.models:
        for pack in args.packs:
            r = bench(name, pack, device, args.repeats, burst)
            records.append(r)
            note = " (compile FAILED: both timings are the foreach passes)" if r["compile_failed"] else ""
            print(f"{name:<10} pack {pack:<2} {r['parameters'] / 1e6:7.1f} M parameters in {r['tensors']:>3} tensors: "
                  f"foreach {r['foreach_ms']:8.2f} ms ({r['foreach_gb_per_s']:6.1f} GB/s), "
                  f"compiled {r['compiled_ms']:8.2f} ms ({r['compiled_gb_per_s']:6.1f} GB/s): "
                  f"{r['speedup']:.2f}x; first compiled call {r['compile_s']:.1f} s; "
                  f"first-step difference {r['first_step_max_diff']:.1e}{note}", flush=True)
    if args.save:
        args.save.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
