"""The training data path, resident on the training device: one int16 bank of clips and batched crop ops.

`ClipBank` holds the clips of some folds as one int16 tensor (plus offsets, lengths, labels) on the
device that trains (ESC-50 at 44.1 kHz is about 0.9 GB, UrbanSound8K about 2.8 GB). A training
batch is a handful of tensor ops over the whole batch: gather the samples each output position
needs, linear interpolation for scale augmentation computed only at the T output positions of the
crop (never over the whole clip), zero padding, /32768 and gain. The 10-crop test gathers its crops
from the same bank. No per-clip Python, no host-to-device copy of audio, no host sync per step.

Semantics are BC learning's reference preprocessing (`intermix_core.reference`, clip by clip in
numpy): on the same draws (clip, crop start, scale factor, gain) both return the same crops to
float32 precision (`tests/test_bank.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from intermix_core.config import AugmentConfig

FULL_SCALE = 32768.0  # inputs are int16 samples / 32,768, in [-1, 1)


@dataclass
class ClipBank:
    """Clips as one int16 tensor `samples` on a device; clip k is samples[offsets[k] : offsets[k] + lengths[k]]."""

    samples: torch.Tensor  # (S,) int16
    offsets: torch.Tensor  # (N,) int64
    lengths: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64

    @classmethod
    def from_arrays(cls, clips: list[np.ndarray], labels: np.ndarray, device: torch.device | str = "cpu") -> "ClipBank":
        """A bank of int16 clips (any lengths >= 1) and their labels, copied once to `device`."""
        if not clips:
            raise ValueError("a clip bank needs at least one clip")
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError("every clip needs at least one sample")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        samples = np.concatenate([np.asarray(c, dtype=np.int16) for c in clips])
        dev = torch.device(device)
        return cls(
            samples=torch.from_numpy(samples).to(dev), offsets=torch.from_numpy(offsets).to(dev),
            lengths=torch.from_numpy(lengths).to(dev), labels=torch.as_tensor(labels, dtype=torch.int64).to(dev),
        )

    @classmethod
    def from_prepared(cls, data: "PreparedData", folds: list[int], device: torch.device | str = "cpu") -> "ClipBank":  # noqa: F821
        """The clips of `folds` of a prepared dataset (intermix_core.data.PreparedData), in fold order."""
        clips = [c for f in folds for c in data.clips(f)]
        labels = np.concatenate([data.labels(f) for f in folds])
        return cls.from_arrays(clips, labels, device)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def device(self) -> torch.device:
        """Where the bank lives."""
        return self.samples.device

    def nbytes(self) -> int:
        """Bytes the bank holds on its device."""
        return sum(t.numel() * t.element_size() for t in (self.samples, self.offsets, self.lengths, self.labels))


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


def draw_crops(
    bank: ClipBank, clips: torch.Tensor, length: int, augment: AugmentConfig, generator: torch.Generator
) -> CropDraw:
    """Draw scale factor (1.25^U(-1,1)), crop start (uniform) and gain (10^(U(-6,6)/20)) for each clip, on the bank's device."""
    n, dev = len(clips), bank.device
    factors = None
    if augment.scale:
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


def train_batch(bank: ClipBank, draw: CropDraw, length: int) -> torch.Tensor:
    """Training inputs (B, length) float32 in [-1, 1] for fixed draws: scale, pad length // 2, crop, /32768, gain."""
    clips = draw.clips
    base = bank.offsets[clips].unsqueeze(1)  # (B, 1)
    last = (bank.lengths[clips] - 1).unsqueeze(1)  # (B, 1) last sample of the unscaled clip
    n_out = scaled_lengths(bank, clips, draw.factors).unsqueeze(1)  # (B, 1)
    q = draw.starts.unsqueeze(1) + torch.arange(length, device=bank.device) - length // 2  # (B, T) in the scaled clip
    valid = (q >= 0) & (q < n_out)
    q = q.clamp_(min=0)
    if draw.factors is None:
        x = bank.samples[base + q.minimum(last)].to(torch.float32)
    else:
        ref = q.to(torch.float64) / draw.factors.unsqueeze(1)  # (B, T) position in the original clip
        lo = ref.to(torch.int64).minimum(last)
        frac = (ref - lo.to(torch.float64)).to(torch.float32)
        a = bank.samples[base + lo].to(torch.float32)
        b = bank.samples[base + (lo + 1).minimum(last)].to(torch.float32)
        x = torch.lerp(a, b, frac)
    x = torch.where(valid, x, 0.0).div_(FULL_SCALE)
    if draw.gains is not None:
        x.mul_(draw.gains.unsqueeze(1))
    return x


def eval_batch(bank: ClipBank, clips: torch.Tensor, length: int, n_crops: int) -> torch.Tensor:
    """The test crops of `clips`, (len(clips) * n_crops, length): pad length // 2, /32768, evenly strided crops."""
    pad = length // 2
    lengths = bank.lengths[clips].unsqueeze(1)  # (n, 1)
    stride = (lengths + 2 * pad - length) // max(n_crops - 1, 1)  # (n, 1)
    starts = torch.arange(n_crops, device=bank.device) * stride  # (n, n_crops)
    q = starts.unsqueeze(2) + torch.arange(length, device=bank.device) - pad  # (n, n_crops, T)
    valid = (q >= 0) & (q < lengths.unsqueeze(2))
    idx = bank.offsets[clips].view(-1, 1, 1) + q.clamp(min=0).minimum(lengths.unsqueeze(2) - 1)
    x = torch.where(valid, bank.samples[idx].to(torch.float32), 0.0).div_(FULL_SCALE)
    return x.reshape(-1, length)


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
