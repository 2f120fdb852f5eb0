"""The training data path, resident on the training device: one int16 bank of clips and batched crop ops.

`ClipBank` holds the clips of some folds as one int16 tensor (plus offsets, lengths, labels) on the
device that trains (ESC-50 at 44.1 kHz is about 0.9 GB, UrbanSound8K about 2.8 GB). A training
batch is a handful of tensor ops over the whole batch: gather the samples each output position
needs, linear interpolation for scale augmentation computed only at the T output positions of the
crop (never over the whole clip), zero padding, /32768 and gain. The 10-crop test gathers its crops
from the same bank. No per-clip Python, no host-to-device copy of audio, no host sync per step.

Semantics are BC learning's reference preprocessing (`intermix_core.method.bc_reference`, clip by clip in
numpy): on the same draws (clip, crop start, scale factor, gain) both return the same crops to
float32 precision (`tests/unit/method/test_bank.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from intermix_core.config import AugmentConfig
from intermix_core.method.fused import fused

FULL_SCALE = 32768.0  # inputs are int16 samples / 32,768, in [-1, 1)


@dataclass
class ClipBank:
    """Clips for crops of `length` samples, as one int16 tensor `samples` on a device, zero-padded for cropping.

    Each clip k is stored as `pad` zeros, its samples at [offsets[k], offsets[k] + lengths[k]), and
    `pad` zeros (pad = length // 2, the reference's padding), with zeros after the last clip for the
    widest window a scaled crop reads. So every crop of the reference, training or test, is a
    contiguous window of the bank: one row copy per crop instead of a gather per sample.
    """

    samples: torch.Tensor  # (S,) int16, padded as above
    offsets: torch.Tensor  # (N,) int64: first sample of each clip
    lengths: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64
    length: int  # T, the crop length the bank is padded for
    max_window: int  # the widest window a scaled crop reads: ceil(T * scale_max) + 2

    @property
    def pad(self) -> int:
        """Zeros on each side of a clip: T // 2."""
        return self.length // 2

    @classmethod
    def from_arrays(
        cls, clips: list[np.ndarray], labels: np.ndarray, device: torch.device | str = "cpu", *, length: int,
        scale_max: float = 1.25,
    ) -> "ClipBank":
        """A bank of int16 clips (any lengths >= 1) and their labels for crops of `length`, copied once to `device`."""
        if not clips:
            raise ValueError("a clip bank needs at least one clip")
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError("every clip needs at least one sample")
        pad, window = length // 2, math.ceil(length * max(scale_max, 1.0)) + 2
        starts = np.concatenate([[0], np.cumsum(lengths + 2 * pad)[:-1]]) + pad  # each clip after its leading zeros
        samples = np.zeros(int(starts[-1] + lengths[-1] + pad + window), dtype=np.int16)
        for start, clip in zip(starts, clips):
            samples[start : start + len(clip)] = clip
        dev = torch.device(device)
        return cls(
            samples=torch.from_numpy(samples).to(dev), offsets=torch.from_numpy(starts).to(dev),
            lengths=torch.from_numpy(lengths).to(dev), labels=torch.as_tensor(labels, dtype=torch.int64).to(dev),
            length=length, max_window=window,
        )

    @classmethod
    def from_prepared(
        cls, data: "PreparedData", folds: list[int], device: torch.device | str = "cpu", *, length: int,  # noqa: F821
        scale_max: float = 1.25,
    ) -> "ClipBank":
        """The clips of `folds` of a prepared dataset (intermix_core.data.PreparedData), in fold order."""
        clips = [c for f in folds for c in data.clips(f)]
        labels = np.concatenate([data.labels(f) for f in folds])
        return cls.from_arrays(clips, labels, device, length=length, scale_max=scale_max)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def device(self) -> torch.device:
        """Where the bank lives."""
        return self.samples.device

    def nbytes(self) -> int:
        """Bytes the bank holds on its device."""
        return sum(t.numel() * t.element_size() for t in (self.samples, self.offsets, self.lengths, self.labels))

    def windows(self, starts: torch.Tensor, width: int) -> torch.Tensor:
        """Rows samples[s : s + width] for each s in `starts` (int16, one copy per row)."""
        return self.samples.unfold(0, width, 1)[starts]


@dataclass
class CropDraw:
    """The random choices of one training batch: which clips, where to crop, how to scale and gain each."""

    clips: torch.Tensor  # (B,) int64 clip indices into the bank
    starts: torch.Tensor  # (B,) int64 crop start in the zero-padded (scaled) clip
    factors: torch.Tensor | None = None  # (B,) float64 scale factors (None: no scale augmentation)
    gains: torch.Tensor | None = None  # (B,) float32 linear gains (None: no gain augmentation)


def scaled_lengths(bank: ClipBank, clips: torch.Tensor, factors: torch.Tensor | None) -> torch.Tensor:
    """Length of each clip after scale augmentation: int(len * factor), at least 1 (as the reference)."""
    lengths = bank.lengths[clips]
    if factors is None:
        return lengths
    return (lengths.to(torch.float64) * factors).floor().to(torch.int64).clamp_(min=1)


def draw_crops(bank: ClipBank, clips: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> CropDraw:
    """Draw scale factor (1.25^U(-1,1)), crop start (uniform) and gain (10^(U(-6,6)/20)) for each clip, on the bank's device."""
    n, dev, length = len(clips), bank.device, bank.length
    factors = None
    if augment.scale:
        if math.ceil(length * augment.scale_max) + 2 > bank.max_window:
            raise ValueError(f"scale_max {augment.scale_max} reads beyond the bank's window; build it with that scale_max")
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        factors = augment.scale_max ** (u * 2.0 - 1.0)
    choices = scaled_lengths(bank, clips, factors) + 2 * (length // 2) - length + 1  # len(padded) - T + 1
    u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    starts = (u * choices).floor().to(torch.int64).minimum(choices - 1)
    gains = None
    if augment.gain:
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        gains = (10.0 ** ((u * 2.0 - 1.0) * augment.gain_db / 20.0)).to(torch.float32)
    return CropDraw(clips=clips, starts=starts, factors=factors, gains=gains)


@fused
def _scaled_crops(bank: ClipBank, draw: CropDraw) -> torch.Tensor:
    """Training inputs (B, T) of the scaled, zero-padded clips (/32768, gain): interpolation at the T outputs only.

    Position k of a crop is q = start + k - pad in the scaled clip; its value (for 0 <= q < n_out) is
    the reference's (1 - frac) x[lo] + frac x[hi] with ref = q / factor (float64, as numpy), lo = floor(ref),
    hi = min(lo + 1, len - 1). Each row reads one contiguous window of its clip. On a GPU (or with
    INTERMIX_COMPILE=1) the whole function is one compiled kernel chain (intermix_core.method.fused).
    """
    length, pad, width = bank.length, bank.pad, bank.max_window
    clips, factors = draw.clips, draw.factors
    f = factors.unsqueeze(1)  # (B, 1)
    q0 = (draw.starts - pad).to(torch.float64)  # (B,) first position, in the scaled clip
    lo_min = (q0.clamp(min=0.0) / factors).floor()  # (B,) first source sample any valid position needs
    q = torch.arange(length, device=bank.device, dtype=torch.float64) + q0.unsqueeze(1)  # (B, T)
    valid = (q >= 0) & (q < scaled_lengths(bank, clips, factors).unsqueeze(1))
    ref = q.clamp_(min=0.0).div_(f)  # (B, T) source position, float64
    lo = ref.floor()
    frac = ref.sub_(lo).to(torch.float32)
    local = lo.sub_(lo_min.unsqueeze(1)).to(torch.int64).clamp_(max=width - 2)  # index into the row's window
    src = bank.windows(bank.offsets[clips] + lo_min.to(torch.int64), width).to(torch.float32)  # (B, W)
    # hi = min(lo + 1, len - 1): the sample after a clip's last is its last, not the padding zero
    last = (bank.lengths[clips] - 1 - lo_min.to(torch.int64)).unsqueeze(1).clamp_(max=width - 1)  # (B, 1)
    src.scatter_(1, (last + 1).clamp_(max=width - 1), src.gather(1, last))  # a no-op where the clip outruns the window
    a = src.gather(1, local)
    b = src[:, 1:].gather(1, local)  # x[lo + 1] without a (B, T) index addition
    x = torch.where(valid, torch.lerp(a, b, frac), 0.0).div_(FULL_SCALE)
    return x if draw.gains is None else x.mul_(draw.gains.unsqueeze(1))


def apply_gain(x: torch.Tensor, gains: torch.Tensor | None) -> torch.Tensor:
    """x (B, ...) with row b multiplied by gains[b] (x itself when gains is None)."""
    return x if gains is None else x * gains.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def train_batch(bank: ClipBank, draw: CropDraw) -> torch.Tensor:
    """Training inputs (B, T) float32 in [-1, 1] for fixed draws: scale, pad T // 2, crop, /32768, gain (per clip)."""
    if draw.factors is not None:
        return _scaled_crops(bank, draw)
    x = bank.windows(bank.offsets[draw.clips] - bank.pad + draw.starts, bank.length).to(torch.float32)  # padded bank
    x = x.div_(FULL_SCALE)
    return x if draw.gains is None else x.mul_(draw.gains.unsqueeze(1))


@dataclass
class TrainInputs:
    """A training batch as the data path leaves it: the crops before gain, and the gain of each network input."""

    crops: torch.Tensor  # (B, T) float32 in [-1, 1]: scaled, padded, cropped, /32768
    gains: torch.Tensor | None  # (B,) linear gains (None: no gain augmentation), applied by the mixer


def train_inputs(bank: ClipBank, draw: CropDraw) -> TrainInputs:
    """The crops of fixed draws and, apart, their gains: gain comes after mixing (`mixing.Mixer.draw`)."""
    return TrainInputs(train_batch(bank, replace(draw, gains=None)), draw.gains)


def eval_batch(bank: ClipBank, clips: torch.Tensor, n_crops: int) -> torch.Tensor:
    """The test crops of `clips`, (len(clips) * n_crops, T): pad T // 2, /32768, evenly strided crops."""
    length, pad = bank.length, bank.pad
    lengths = bank.lengths[clips].unsqueeze(1)  # (n, 1)
    stride = (lengths + 2 * pad - length) // max(n_crops - 1, 1)  # (n, 1)
    starts = bank.offsets[clips].unsqueeze(1) - pad + torch.arange(n_crops, device=bank.device) * stride
    return bank.windows(starts.reshape(-1), length).to(torch.float32).div_(FULL_SCALE)


def epoch_order(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A random permutation of the n clips (one epoch of in-batch pairing), drawn on `device`."""
    return torch.randperm(n, generator=generator, device=device)


class PairSampler:
    """The authors' pair draws: i and j of different classes, uniform over all such ordered pairs.

    Their dataset draws two clips at random and retries until the labels differ (`dataset.py`);
    that is the uniform distribution over ordered different-class pairs, drawn here without a
    retry loop: i with probability proportional to the number of clips of other classes, then j
    uniformly among those.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        counts = torch.bincount(labels, minlength=num_classes)
        if int((counts > 0).sum()) < 2:
            raise ValueError("pairing clips of different classes needs at least two classes")
        self.n = len(labels)
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)  # clip indices grouped by class
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
        self.weights = (self.n - counts[labels]).to(torch.float32)  # per clip: clips of other classes

    def draw(self, n_pairs: int, generator: torch.Generator) -> torch.Tensor:
        """(2 n_pairs,) clip indices, rows 2k and 2k+1 a different-class pair."""
        i = torch.multinomial(self.weights, n_pairs, replacement=True, generator=generator)
        li = self.labels[i]
        others = self.n - self.counts[li]
        u = torch.rand(n_pairs, generator=generator, device=self.labels.device, dtype=torch.float64)
        pos = (u * others).floor().to(torch.int64).minimum(others - 1)
        pos = torch.where(pos < self.starts[li], pos, pos + self.counts[li])  # skip i's own class block
        j = self.order[pos]
        return torch.stack([i, j], dim=1).reshape(-1)
