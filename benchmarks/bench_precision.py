"""float32 against bfloat16 on this CPU, natively and under the ISA caps that imitate CPUs without bfloat16 units.

Usage:
    python benchmarks/bench_precision.py [--models m18 ...] [--batch 16] [--input-length 16000] [--repeats 3]

For each CPU setting (this CPU as it is; oneDNN capped at AVX512_CORE, an AVX-512 CPU without bfloat16; and
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, a plain AVX2 CPU such as most laptops) and each precision, one
worker process (the caps are read when torch loads) times InterMix training steps of one thread on the same batch,
rounds interleaved; it prints each median step time, its ratio to float32 in the same setting, and what
`optim.precision: auto` picks there (`intermix_core.method.devices.choose_precision`). `auto` is right where it picks
the faster of the two.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# a spawned worker imports this module afresh, so torch loads there under the caps its environment sets
from intermix_core.config import parse_config  # noqa: E402
from intermix_core.method.devices import choose_precision  # noqa: E402
from intermix_core.method.mixing import Mixer  # noqa: E402
from intermix_core.method.optim import make_optimizer  # noqa: E402
from intermix_core.method.train import training_step  # noqa: E402
from intermix_core.models import create_model, model_class  # noqa: E402

SETTINGS: dict[str, dict[str, str]] = {
    "this CPU": {},
    "AVX-512 without bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "plain AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
PRECISIONS = ("fp32", "bf16")


def _worker(conn: Connection, model_name: str, precision: str, batch: int, length: int) -> None:
    """Serve timing requests: each a number of steps, answered with seconds per step."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = parse_config({"model": model_name, "dataset": "esc10", "strategy": "intermix", "input_length": length})
    model = create_model(model_name, 10)
    opt = make_optimizer(model.parameters(), cfg.optim, 0.01)
    mixer = Mixer(cfg.strategy, 10, model_class(model_name).sample_rate, 0)
    x, y = 0.1 * torch.randn(batch, length), torch.arange(batch) % 10
    training_step(model, opt, mixer, x, y, precision)  # warm-up: oneDNN's primitives
    conn.send(choose_precision("auto", torch.device("cpu"))[0])
    while (steps := conn.recv()) is not None:
        t0 = time.perf_counter()
        for _ in range(steps):
            training_step(model, opt, mixer, x, y, precision)
        conn.send((time.perf_counter() - t0) / steps)


def _start(ctx: mp.context.SpawnContext, env: dict[str, str], *args: object) -> tuple[mp.Process, Connection, str]:
    """A worker with `env` in its environment when it starts (spawned: it loads torch afresh under the caps)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, *args), daemon=True)
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return proc, parent, parent.recv()


def main() -> None:
    """Time every setting and precision, interleaved, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["m18"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-length", type=int, default=16000, help="samples per crop (the demo's M18: 16000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="steps per timing")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print(f"{'model':<10} {'CPU setting':<22} {'fp32 s/step':>11} {'bf16 s/step':>11} {'bf16/fp32':>9}  auto picks")
    for model_name in args.models:
        workers = {(s, p): _start(ctx, env, model_name, p, args.batch, args.input_length)
                   for s, env in SETTINGS.items() for p in PRECISIONS}
        times: dict[tuple[str, str], list[float]] = {k: [] for k in workers}
        for _ in range(args.repeats):
            for key, (_, conn, _) in workers.items():
                conn.send(args.steps)
                times[key].append(conn.recv())
        for setting in SETTINGS:
            fp32, bf16 = (statistics.median(times[(setting, p)]) for p in PRECISIONS)
            auto = workers[(setting, "fp32")][2]
            print(f"{model_name:<10} {setting:<22} {fp32:>11.3f} {bf16:>11.3f} {bf16 / fp32:>8.2f}x  {auto}"
                  + ("" if (auto == "bf16") == (bf16 < fp32) else "  (not the faster)"))
        for proc, conn, _ in workers.values():
            conn.send(None)
            proc.join(timeout=30)


if __name__ == "__main__":
    main()
