"""How many folds of a cell one GPU task trains as a pack, and which: sizing by GPU memory (no torch).

A pack (`intermix_core.method.pack`) trains K folds of one cell as one fused model in one process.
The pipelines ask this module for the packs of a fold loop; everything that sizes them lives here:

- one fold's memory on the device: its weights, gradients, optimizer buffer and the fused step's
  concatenated copies (4 x the parameters, float32) plus its training activations, saved for the
  backward pass and as large again for the gradients in flight (3 x the activations of a batch);
- what a pack shares once: the dataset bank (int16 clips of every fold, `method.bank.ClipBank`) and
  a fixed allowance for the CUDA context, cuDNN's workspaces and the 10-crop evaluation
  (`FIXED_BYTES`);
- the GPU's usable memory: `USABLE` of its size, leaving room for the allocator's fragmentation.

The model facts (parameters, activations per input) are in `intermix_core.models.specs`, checked
against the built models by the tests. The estimate is meant to be generous: one H200 measurement
(2026-12-04, batch 32, fp32, one fold with its evaluation) peaked at 5.3 GiB for EnvNet and 6.5 GiB
for EnvNet-v2, and the estimate of one fold is above both (tests/unit/method/test_packing.py).

On a CPU one fold's step already keeps the task's cores busy, so CPU tasks train one fold unless
told otherwise (`ClusterOptions.pack`, `intermix run --pack K`).
"""

from __future__ import annotations

import math

from intermix_core.config import FOLD_CLIPS, ExperimentConfig
from intermix_core.models.specs import model_spec

GIB = 2**30
FIXED_BYTES = 3 * GIB  # per GPU task: CUDA context, cuDNN workspaces, evaluation batches
USABLE = 0.85  # of the GPU's memory: the rest for the caching allocator's fragmentation
CLIP_SECONDS = {"esc10": 5.0, "esc50": 5.0, "urbansound8k": 4.0}  # the longest clip of each dataset


def fold_bytes(cfg: ExperimentConfig) -> int:
    """One fold's training memory on the device: 4 x its float32 parameters + 3 x its activations of a batch."""
    spec = model_spec(cfg.model)
    rows = cfg.optim.batch_size * (2 if cfg.strategy.pairing == "adjacent_pairs" else 1)
    activations = spec.activation_mib * 2**20 * rows * cfg.crop_length / spec.input_length
    return int(4 * 4 * spec.params_millions * 1e6 + 3 * activations)


def bank_bytes(cfg: ExperimentConfig) -> int:
    """The dataset's clips as the shared int16 bank (every fold's clips, at the model's sample rate)."""
    clips = sum(FOLD_CLIPS[cfg.dataset])
    return int(clips * CLIP_SECONDS[cfg.dataset] * model_spec(cfg.model).sample_rate * 2)


def pack_bytes(cfg: ExperimentConfig, k: int) -> int:
    """Device memory of a pack of `k` folds of `cfg`: the fixed allowance, the bank once, and k folds."""
    return FIXED_BYTES + bank_bytes(cfg) + k * fold_bytes(cfg)


def auto_pack(cfg: ExperimentConfig, folds: int, gpu_memory_gib: float) -> int:
    """The most folds (at most `folds`, at least 1) whose pack fits in USABLE of a GPU of `gpu_memory_gib`."""
    room = USABLE * gpu_memory_gib * GIB - FIXED_BYTES - bank_bytes(cfg)
    return max(1, min(folds, math.floor(room / fold_bytes(cfg))))


def split_folds(folds: tuple[int, ...] | list[int], k: int) -> list[list[int]]:
    """`folds` in as few packs of at most `k` as possible, their sizes as even as can be, in fold order."""
    if k < 1:
        raise ValueError(f"pack size {k}: expected at least 1")
    folds = list(folds)
    n = math.ceil(len(folds) / k) if folds else 0
    base, extra = divmod(len(folds), n) if n else (0, 0)
    packs, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        packs.append(folds[start : start + size])
        start += size
    return packs


def pack_item(folds: list[int]) -> str:
    """A pack as a pipeline loop item: its folds, space separated ('1 2 3')."""
    return " ".join(str(f) for f in folds)


def parse_pack_item(text: str) -> list[int]:
    """The folds of a pipeline loop item ('1 2 3'); anything else is a ValueError naming it."""
    words = text.split()
    if not words or not all(w.isdigit() and int(w) >= 1 for w in words) or len(set(words)) != len(words):
        raise ValueError(f"folds {text!r}: expected distinct fold numbers separated by spaces, e.g. '1 2 3'")
    return [int(w) for w in words]
