"""Training throughput per model, precision and augmentation, on whatever device is here, side by side in one run.

Usage:
    python benchmarks/bench_throughput.py [--models envnet_v2 ...] [--precisions fp32 bf16] [--batch 32]
                                          [--repeats 5] [--threads 1] [--save FILE.json] [--burst N] [--pack K]

For each model it measures, on the same device in one run:
- data path alone: samples/s of the device-resident path (`intermix_core.method.bank`: draw + crop + scale +
  gain on a bank of 5 s int16 clips) as it runs by default (INTERMIX_COMPILE=auto: compiled on a GPU,
  eager on the CPU) and, with scale + gain, compiled (INTERMIX_COMPILE=1); and of the old per-clip
  numpy path (`intermix_core.method.bc_reference`, plus the host-to-device copy); with and without scale + gain;
- model step alone: Standard training steps on a batch already on the device;
- full step: data path + InterMix training step (the mixer's draw, levels and phase shift included),
  and the data path's share of it;
- the 10-crop evaluation: clips/s through `train.predict_crops`;
- with `--pack K` (K > 1): the full step of K folds trained as one pack (`intermix_core.method.pack`: K models,
  one fused forward and update, each fold its own data draws and mixer), as aggregate samples/s of all K folds,
  in a record of its own with `"pack": K` beside the one-fold record (`"pack": 1`); with scale + gain also
  with the convolution layout the device's default does not use (`pack_kernels`: grouped on a GPU, one
  call per fold on a CPU; `other_kernels` and `other_kernels_samples_per_s`), so a GPU run shows which is faster.
Rounds interleave the variants so the machine's drift hits them alike; figures are medians. Each round times
`--burst` calls back to back with the device synchronized only before and after (8 on a GPU by default: a training
loop never waits for a step, so the host launches the next step while the device runs this one; a wait after every
call would add each step's launch time to it).
`--save` writes one JSON record per (model, precision, augment, pack) with at least: model, device,
precision, augment, pack, data_samples_per_s, step_samples_per_s, full_samples_per_s (what
`intermix estimate --throughput` reads; for a pack, full_samples_per_s is the aggregate of its folds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from intermix_core.config import STRATEGIES, AugmentConfig, parse_config  # noqa: E402
from intermix_core.method.bank import ClipBank, draw_crops, train_batch  # noqa: E402
from intermix_core.method.bc_reference import make_train_batch  # noqa: E402
from intermix_core.method.devices import default_burst, device_name, resolve_device, time_per_call  # noqa: E402
from intermix_core.method.mixing import Mixer  # noqa: E402
from intermix_core.method.optim import make_optimizer  # noqa: E402
from intermix_core.method.pack import dropout_generator, make_pack_optimizer, pack_step, per_fold_kernels  # noqa: E402
from intermix_core.method.bank import train_inputs  # noqa: E402
from intermix_core.method.train import predict_crops, training_step  # noqa: E402
from intermix_core.models import create_model, list_models, model_class  # noqa: E402

CLIP_SECONDS = 5.0  # an ESC-50 clip
BANK_CLIPS = 256
NUM_CLASSES = 50


def bench_model(
    name: str, device: torch.device, precisions: list[str], batch: int, repeats: int, burst: int = 1, pack: int = 1,
) -> list[dict[str, object]]:
    """All measurements of one model, one record per (precision, augment)."""
    cls = model_class(name)
    rng = np.random.default_rng(0)
    clip_len = int(CLIP_SECONDS * cls.sample_rate)
    clips = [(rng.standard_normal(clip_len) * 3000).astype(np.int16) for _ in range(BANK_CLIPS)]
    labels = np.arange(BANK_CLIPS) % NUM_CLASSES
    bank = ClipBank.from_arrays(clips, labels, device, length=cls.input_length)
    length = cls.input_length
    gen = torch.Generator(device=device).manual_seed(0)
    np_rng = np.random.default_rng(1)
    augs = {False: AugmentConfig(), True: AugmentConfig(scale=True, gain=True)}

    def new_path(augment: bool, compile_mode: str | None = None) -> torch.Tensor:
        idx = torch.randint(BANK_CLIPS, (batch,), generator=gen, device=device)
        if compile_mode is None:
            return train_batch(bank, draw_crops(bank, idx, augs[augment], gen))
        before = os.environ.get("INTERMIX_COMPILE")
        os.environ["INTERMIX_COMPILE"] = compile_mode
        try:
            return train_batch(bank, draw_crops(bank, idx, augs[augment], gen))
        finally:
            if before is None:
                os.environ.pop("INTERMIX_COMPILE")
            else:
                os.environ["INTERMIX_COMPILE"] = before

    def old_path(augment: bool) -> torch.Tensor:
        idx = np_rng.integers(0, BANK_CLIPS, size=batch)
        x = make_train_batch([clips[k] for k in idx], length, np_rng, scale_max=1.25 if augment else None,
                             gain_db=6.0 if augment else None)
        return torch.from_numpy(x).to(device)

    records = []
    for precision in precisions:
        torch.manual_seed(0)
        model = create_model(name, NUM_CLASSES).to(device).train()
        cfg = parse_config({"model": name, "dataset": "esc50", "optim": {"precision": precision}}).resolved_optim()
        opt = make_optimizer(model.parameters(), cfg, 1e-4)
        standard = Mixer(STRATEGIES["standard"], NUM_CLASSES, cls.sample_rate, 0)
        intermix = Mixer(STRATEGIES["intermix"], NUM_CLASSES, cls.sample_rate, 0)
        x_fixed = new_path(False)
        y = torch.arange(batch, device=device) % NUM_CLASSES
        variants: dict[str, Callable[[], object]] = {
            "step": lambda: training_step(model, opt, standard, x_fixed, y, precision),
            "data_new_plain": lambda: new_path(False),
            "data_new_aug": lambda: new_path(True),
            "data_eager_aug": lambda: new_path(True, "0"),
            "data_compiled_aug": lambda: new_path(True, "1"),
            "data_old_plain": lambda: old_path(False),
            "data_old_aug": lambda: old_path(True),
            "full_plain": lambda: training_step(model, opt, intermix, new_path(False), y, precision),
            "full_aug": lambda: training_step(model, opt, intermix, new_path(True), y, precision),
            "full_old_plain": lambda: training_step(model, opt, intermix, old_path(False), y, precision),
            "full_old_aug": lambda: training_step(model, opt, intermix, old_path(True), y, precision),
        }
        if pack > 1:  # K folds as one pack: K models and mixers, one fused step (each fold draws its own batch)
            models = [create_model(name, NUM_CLASSES).to(device).train() for _ in range(pack)]
            pack_opt = make_pack_optimizer([make_optimizer(m.parameters(), cfg, 1e-4) for m in models], cfg, 1e-4)
            mixers = [Mixer(STRATEGIES["intermix"], NUM_CLASSES, cls.sample_rate, k) for k in range(pack)]
            gens = [dropout_generator(device) for _ in range(pack)]

            def pack_full(augment: bool, kernels: str = "auto") -> object:
                xs = []
                for _ in range(pack):
                    idx = torch.randint(BANK_CLIPS, (batch,), generator=gen, device=device)
                    xs.append(train_inputs(bank, draw_crops(bank, idx, augs[augment], gen)))
                return pack_step(models, pack_opt, mixers, xs, [y] * pack, gens, precision, kernels)

            variants["pack_plain"] = lambda: pack_full(False)
            variants["pack_aug"] = lambda: pack_full(True)
            # the convolution layout `auto` does not pick here, with scale and gain: whether grouped convolutions
            # beat one per fold on this device is a measurement, not an assumption (pack.per_fold_kernels)
            layouts = ("per_fold", "grouped") if per_fold_kernels("auto", device) else ("grouped", "per_fold")
            variants["pack_other_aug"] = lambda: pack_full(True, layouts[1])
        for fn in variants.values():  # warm-up (allocator, cuDNN's algorithm choice, lazy inits, compilation)
            time_per_call(fn, device)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for key, fn in variants.items():
                times[key].append(time_per_call(fn, device, burst))
        test_bank = ClipBank.from_arrays(clips[:32], labels[:32], device, length=length)
        t_eval = statistics.median(time_per_call(lambda: predict_crops(model, test_bank, 10, precision=precision),
                                                 device) for _ in range(max(2, repeats // 2)))
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        med = {k: statistics.median(v) for k, v in times.items()}
        for augment in (False, True):
            tag = "aug" if augment else "plain"
            records.append({
                "model": name, "device": device.type, "device_name": device_name(device), "precision": precision,
                "augment": augment, "batch": batch, "repeats": repeats, "burst": burst,
                "data_samples_per_s": batch / med[f"data_new_{tag}"],
                "data_eager_samples_per_s": batch / med["data_eager_aug"] if augment else batch / med["data_new_plain"],
                "data_compiled_samples_per_s": batch / med["data_compiled_aug"] if augment else None,
                "old_data_samples_per_s": batch / med[f"data_old_{tag}"],
                "step_samples_per_s": batch / med["step"],
                "full_samples_per_s": batch / med[f"full_{tag}"],
                "old_full_samples_per_s": batch / med[f"full_old_{tag}"],
                "data_share_of_full": med[f"data_new_{tag}"] / med[f"full_{tag}"],
                "eval_clips_per_s": len(test_bank) / t_eval,
                "peak_gpu_memory_gib": peak, "pack": 1,
                "torch": torch.__version__, "date": dt.date.today().isoformat(),
            })
            if pack > 1:
                records.append({**records[-1], "pack": pack, "full_samples_per_s": pack * batch / med[f"pack_{tag}"],
                                "one_fold_full_samples_per_s": batch / med[f"full_{tag}"],
                                "old_full_samples_per_s": None, "data_share_of_full": None,
                                "pack_kernels": layouts[0], "other_kernels": layouts[1],
                                "other_kernels_samples_per_s": pack * batch / med["pack_other_aug"] if augment else None})
    return records


def main() -> None:
    """Print the throughput table for the chosen models; optionally save the records as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list_models())
    ap.add_argument("--precisions", nargs="*", default=None, help="default: fp32 on CPU, fp32 and bf16 on CUDA")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    ap.add_argument("--save", type=Path, help="write the records to this JSON file")
    ap.add_argument("--pack", type=int, default=1, help="also time K folds trained as one pack (aggregate samples/s)")
    ap.add_argument("--burst", type=int, help="calls timed back to back per round, one device sync at each end "
                    "(default: 8 on a GPU, as a training loop runs; 1 on a CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    burst = args.burst or default_burst(device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch}; "
          f"median of {args.repeats} interleaved rounds of {burst} call(s) back to back", flush=True)
    head = (f"{'model':<11} {'prec':<5} {'aug':<4} {'data new/s':>11} {'compiled/s':>11} {'data old/s':>11} "
            f"{'new/old':>8} {'best/old':>9} {'step/s':>9} {'full/s':>9} {'full new/old':>13} {'data %':>7} "
            f"{'eval clips/s':>13}")
    print(head)
    records = []
    if args.pack < 1:
        ap.error(f"--pack {args.pack}: expected a number of folds >= 1")
    for name in args.models:
        for r in bench_model(name, device, precisions, args.batch, args.repeats, burst, args.pack):
            records.append(r)
            if r["pack"] > 1:
                other = ("" if r["other_kernels_samples_per_s"] is None else
                         f"; with {r['other_kernels']} convolutions "
                         f"{r['other_kernels_samples_per_s']:,.1f}")
                print(f"{r['model']:<11} {r['precision']:<5} {'yes' if r['augment'] else 'no':<4} pack of {r['pack']}: "
                      f"{r['full_samples_per_s']:,.1f} samples/s in all, one fold alone {r['one_fold_full_samples_per_s']:,.1f}"
                      f" ({r['full_samples_per_s'] / r['one_fold_full_samples_per_s']:.2f}x; {r['pack_kernels']} "
                      f"convolutions{other})", flush=True)
                continue
            best = max(r["data_samples_per_s"], r["data_compiled_samples_per_s"] or 0.0)
            compiled = f"{r['data_compiled_samples_per_s']:>11,.0f}" if r["data_compiled_samples_per_s"] else f"{'-':>11}"
            print(f"{r['model']:<11} {r['precision']:<5} {'yes' if r['augment'] else 'no':<4} "
                  f"{r['data_samples_per_s']:>11,.0f} {compiled} {r['old_data_samples_per_s']:>11,.0f} "
                  f"{r['data_samples_per_s'] / r['old_data_samples_per_s']:>7.2f}x "
                  f"{best / r['old_data_samples_per_s']:>8.2f}x {r['step_samples_per_s']:>9,.1f} "
                  f"{r['full_samples_per_s']:>9,.1f} {r['full_samples_per_s'] / r['old_full_samples_per_s']:>12.3f}x "
                  f"{100 * r['data_share_of_full']:>6.1f}% "
                  f"{r['eval_clips_per_s']:>13,.1f}", flush=True)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(records, indent=1))
        print(f"saved {len(records)} records -> {args.save}")


if __name__ == "__main__":
    main()
