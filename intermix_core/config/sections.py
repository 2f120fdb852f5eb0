"""The sections of a configuration: datasets, one strategy as data, optimisation, augmentation, attack.

Each section is a strict pydantic model: unknown keys and impossible values are refused with the
field's name. The presets that fill them with the paper's values are in `intermix_core.config.presets`.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from intermix_core.common.names import check_name
from intermix_core.common.text import short

DATASETS: dict[str, dict[str, int]] = {
    "esc10": {"num_classes": 10, "num_folds": 5},
    "esc50": {"num_classes": 50, "num_folds": 5},
    "urbansound8k": {"num_classes": 10, "num_folds": 10},
}
# clips per official fold (ESC-50 and ESC-10: equal folds; UrbanSound8K: its metadata's fold column)
FOLD_CLIPS: dict[str, tuple[int, ...]] = {
    "esc10": (80,) * 5,
    "esc50": (400,) * 5,
    "urbansound8k": (873, 888, 925, 990, 936, 823, 838, 806, 816, 837),
}
DatasetName = Literal["esc10", "esc50", "urbansound8k"]
# seeds are 0..2**32 - 1 (numpy's seed range); fold seeds (seed * 1000 + fold) then stay far below 2**63
MAX_SEED = 2**32 - 1
# what a clip whose every sample is zero does to a preparation (intermix_core.data, docs/data.md):
# kept as its zeros with one warning, left out, or an error
OnSilent = Literal["keep", "skip", "error"]
ON_SILENT: tuple[str, ...] = typing.get_args(OnSilent)

# Upper bounds where the method itself gives one, so an absurd but finite value is refused in a line instead of
# allocating gigabytes (augment.scale_max=1e6 asked for a 40 GiB bank): scale augmentation stretches a clip by at
# most MAX_SCALE (BC uses 1.25; the bank reserves a window of T * scale_max per crop); a gain beyond +-40 dB turns
# a 16-bit recording into clipping or silence; the 10-crop test takes evenly spaced crops, and more than
# MAX_CROPS of them only repeat positions; batches and epochs are bounded far above any schedule of the paper.
MAX_SCALE = 4.0
MAX_GAIN_DB = 40.0
MAX_CROPS = 100
MAX_BATCH = 8192
MAX_EPOCHS = 100_000
MAX_EPSILONS = 32
# weight decay multiplies the weights by (1 - lr * weight_decay) each step: the paper's is 5e-4, and beyond 1 the
# decay alone drives a step's weights negative at any usual LR (1e300 trained into a traceback)
MAX_WEIGHT_DECAY = 1.0
# phi ~ U[-phase_max, phase_max] enters only through cos(phi) and a rotation by phi: a half-width beyond pi covers
# the circle again (1e308 gave non-finite phases, then a loss blamed on the LR)
MAX_PHASE = math.pi


class Strict(BaseModel):
    """A section: unknown keys, inf and nan refused; frozen once validated."""

    # allow_inf_nan=False: inf and nan are refused in every float field ("Input should be a finite number")
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StrategyConfig(Strict):
    """One mixing strategy as data (docs/method.md has the table of presets)."""

    name: str  # a preset's name, or a custom strategy's (a name: intermix_core.common.names)
    mix: bool = False
    # "r": weights r, 1-r (mixup, eq. 1); "p": the sound mixing ratio p from A-weighted levels (eq. 3)
    weighting: Literal["r", "p"] = "p"
    # divide by sqrt(w^2 + (1-w)^2) (eqs. 3-4)
    normalize: bool = True
    # add the interference term 2 sqrt(h_i' h_j') cos(phi) (eq. 5)
    interference: bool = False
    # the layer set L: one layer drawn per batch, uniformly; 0 is the waveform
    layers: tuple[int, ...] = (0,)
    # half-width of the phase distribution: phi_i, phi_j ~ U[-phase_max, phase_max]
    phase_max: float = Field(default=1.5707963267948966, ge=0.0, le=MAX_PHASE)
    # sqrt of a negative product in eq. 5: "zero" clamps it to 0, "signed" uses sign(ab) sqrt(|ab|)
    negative_product: Literal["zero", "signed"] = "zero"
    # the sqrt in eq. 5 is exact in the forward pass; its backward slope 1/(2 sqrt(ab)) is capped at
    # 1/(2 sqrt(sqrt_eps)) below sqrt_eps, so gradients stay finite at every ReLU zero
    sqrt_eps: float = Field(default=1e-6, gt=0.0)
    # rotate each waveform's phase by its own phi_i before the model (section 3.1: "phase shifted data
    # samples"); the paper presets with interference set it, `intermix_no_rotation` is the ablation
    rotate_input_phase: bool = False
    # partners: "in_batch" (a random other-class sample of the same batch, B rows per step) or
    # "adjacent_pairs" (the authors' code: pairs drawn as (i, j) of different classes, rows 2k and 2k+1
    # mix with each other, optim.batch_size pairs = 2 x batch_size rows per step, N/2 pairs per epoch)
    pairing: Literal["in_batch", "adjacent_pairs"] = "in_batch"
    # authors'-code switches (all off for the paper)
    gains_on: Literal["input", "hidden"] = "input"
    detach_interference: bool = False

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v, "strategy name")))

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(m < 0 for m in v):
            raise ValueError(f"layers must be a non-empty set of indices >= 0, got {short(list(v))}")
        return tuple(sorted(set(v)))


# the fields of OptimConfig that change how a step executes, not what it computes (to float tolerance): a checkpoint
# written under one setting resumes under another (ExperimentConfig.resumes)
EXECUTION_OPTIONS = ("channels_last", "compile", "cudnn_benchmark")
# what decides a step's speed: the execution options and the precision (a change of arithmetic, not only of speed;
# throughput records are kept per precision)
SPEED_OPTIONS = ("precision", *EXECUTION_OPTIONS)


class OptimConfig(Strict):
    """Nesterov SGD and the step schedule. None means: take the reference value."""

    # epochs of this run as given; None: standard_epochs (else the reference value), doubled for mixing
    epochs: int | None = Field(default=None, ge=1, le=MAX_EPOCHS)
    # Standard learning's epochs for a shorter schedule than the reference; mixing strategies then train
    # twice as many (with double_epochs_for_mixing), as the paper does. Ignored when `epochs` is set.
    standard_epochs: int | None = Field(default=None, ge=1, le=MAX_EPOCHS)
    lr: float | None = Field(default=None, gt=0.0)
    schedule: tuple[float, ...] | None = None
    warmup: int | None = Field(default=None, ge=0, le=MAX_EPOCHS)
    double_epochs_for_mixing: bool = True
    # the paper's "batch size 32" (rows per step; pairs under adjacent pairing). The published Standard/BC
    # numbers come from BC learning's code (64) and the InterMix ones from the authors' (32 pairs = 64 rows):
    # `optim: {batch_size: 64}` trains as they were produced (docs/method.md, "Optimisation")
    batch_size: int = Field(default=32, ge=2, le=MAX_BATCH)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=MAX_WEIGHT_DECAY)
    nesterov: bool = True
    # "chainer": Chainer's NesterovAG, the rule of the paper's reference [6] (BC learning's main.py) and of the
    # authors' code; "pytorch": torch.optim.SGD (Nesterov), the alternative (intermix_core.method.optim)
    update_rule: Literal["chainer", "pytorch"] = "chainer"
    # "bf16": autocast the model's forward pass to bfloat16 (mixing, levels and loss stay float32); "auto": bf16 where it
    # is faster (a CPU with native bfloat16 in oneDNN and ATen), else fp32, chosen where the fold trains and said in
    # one line (intermix_core.method.devices.choose_precision)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # GPU-speed options, off until measured on the GPU that runs the grid (benchmarks/bench_options.py):
    # channels-last memory for the 2-D convolutions (EnvNet, EnvNet-v2, PiczakCNN), and each stage and the
    # head compiled with torch.compile (mixing between stages stays eager). Results are the same to float
    # tolerance; checkpoints are interchangeable (a fold resumes under other EXECUTION_OPTIONS).
    channels_last: bool = False
    compile: bool = False
    # cuDNN's autotuner (torch.backends.cudnn.benchmark): the first step of each input shape times every
    # convolution algorithm and keeps the fastest, instead of cuDNN's heuristic pick. Process-wide; no effect on
    # a CPU. The algorithm may differ between runs, so results agree to float tolerance, not bit for bit
    cudnn_benchmark: bool = False
    # 10-crop evaluation of the test fold every N epochs (and always at the last epoch)
    eval_every: int = Field(default=10, ge=1)
    # a checkpoint once this many seconds of wall time have passed since the last one, and always after the last
    # epoch and when stopping early (a deadline, a signal): a killed fold loses at most about this much training.
    # Wall time, not epochs: a GPU epoch of ESC-10 takes tens of milliseconds, an EnvNet checkpoint ~0.5 s to write
    checkpoint_every_s: float | None = Field(default=60.0, ge=0.0)
    # the alternative: a checkpoint every N epochs (and after the last); when set, checkpoint_every_s is not used
    checkpoint_every: int | None = Field(default=None, ge=1)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and any(not 0.0 < s < 1.0 for s in v):
            raise ValueError(f"schedule entries are fractions of the epochs in (0, 1), got {short(list(v))}")
        if v is not None and any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"schedule entries are the fractions of the epochs where the LR steps down, in "
                             f"increasing order; got {short(list(v))}")
        return v


class AugmentConfig(Strict):
    """Scale and gain augmentation (the paper's 'EnvNet-v2 + augmentation')."""

    scale: bool = False
    scale_max: float = Field(default=1.25, ge=1.0, le=MAX_SCALE)  # factor = scale_max ** U(-1, 1)
    gain: bool = False
    gain_db: float = Field(default=6.0, ge=0.0, le=MAX_GAIN_DB)  # gain = 10 ** (U(-gain_db, gain_db) / 20)


class AttackConfig(Strict):
    """FGSM (eq. 7) on the test crops."""

    epsilons: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)
    # clip x_adv to [-1, 1], the range of a 16-bit recording divided by 32,768 (the paper is silent)
    clip: bool = True

    @field_validator("epsilons")
    @classmethod
    def _eps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= e <= 2 for e in v):  # inputs lie in [-1, 1]: a step beyond 2 moves any sample anywhere
            raise ValueError(f"epsilons must lie in 0..2 (inputs are in [-1, 1]), got {short(list(v))}")
        if len(v) > MAX_EPSILONS:
            raise ValueError(f"at most {MAX_EPSILONS} epsilons, got {len(v)}")
        return v
