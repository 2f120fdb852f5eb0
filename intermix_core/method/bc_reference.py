"""BC learning's reference preprocessing, clip by clip in numpy: the specification the batched path must match.

A transcription of what `mil-tokyo/bc_learning_sound` (`utils.py`, `dataset.py`) does to one clip,
and to one mixed training example (two preprocessed clips, `U.mix`, then `U.random_gain` on the mix),
with every random draw passed in, so a test can hold `intermix_core.method.bank` and
`intermix_core.method.mixing` (the batched, device-resident path that training uses) against it on
the same draws, and `benchmarks/bench_throughput.py` can time the old per-clip path beside the new
one. Nothing here runs during training.
"""

from __future__ import annotations

import numpy as np


def random_scale(sound: np.ndarray, factor: float) -> np.ndarray:
    """Stretch to int(len * factor) samples by linear interpolation (speed and pitch change together), float64."""
    n_out = max(int(len(sound) * factor), 1)
    ref = np.arange(n_out) / factor
    lo = np.minimum(ref.astype(np.int64), len(sound) - 1)
    hi = np.minimum(lo + 1, len(sound) - 1)
    frac = ref - lo
    return (1.0 - frac) * sound[lo] + frac * sound[hi]


def train_crop(sound: np.ndarray, length: int, start: int) -> np.ndarray:
    """Pad length // 2 zeros each side (float32), then the crop of `length` samples at `start`."""
    pad = length // 2
    padded = np.pad(sound.astype(np.float32), (pad, pad))
    if not 0 <= start <= len(padded) - length:
        raise ValueError(f"crop start {start} outside 0..{len(padded) - length}")
    return padded[start : start + length]


def crop_starts(sound_length: int, length: int) -> int:
    """How many crop starts a (scaled) clip of `sound_length` samples allows: len(padded) - length + 1."""
    return sound_length + 2 * (length // 2) - length + 1


def train_example(
    clip: np.ndarray, length: int, start: int, factor: float | None = None, gain: float | None = None
) -> np.ndarray:
    """One training input in [-1, 1]: scale (before padding), pad, crop at `start`, /32768, gain."""
    s = clip.astype(np.float32)
    if factor is not None:
        s = random_scale(s, factor)
    s = train_crop(s, length, start) / 32768.0
    if gain is not None:
        s = s * gain
    return s


def eval_crops(sound: np.ndarray, length: int, n_crops: int) -> np.ndarray:
    """Pad length // 2 each side, then `n_crops` evenly strided crops (n_crops, length), in [-1, 1]."""
    pad = length // 2
    padded = np.pad(sound.astype(np.float32) / 32768.0, (pad, pad))
    stride = (len(padded) - length) // max(n_crops - 1, 1)
    return np.stack([padded[i * stride : i * stride + length] for i in range(n_crops)])


def make_train_batch(
    clips: list[np.ndarray], length: int, rng: np.random.Generator, *, scale_max: float | None = None,
    gain_db: float | None = None,
) -> np.ndarray:
    """The old per-clip training batch (B, length): draws scale, start, gain clip by clip from `rng`."""
    out = np.empty((len(clips), length), dtype=np.float32)
    for k, clip in enumerate(clips):
        factor = scale_max ** rng.uniform(-1.0, 1.0) if scale_max else None
        n = max(int(len(clip) * factor), 1) if factor else len(clip)
        start = int(rng.integers(0, crop_starts(n, length)))
        gain = 10.0 ** (rng.uniform(-gain_db, gain_db) / 20.0) if gain_db else None
        out[k] = train_example(clip, length, start, factor, gain)
    return out


def a_weight(fs: int, n_fft: int, min_db: float = -80.0) -> np.ndarray:
    """BC learning's A-weighting in dB at the rfft bins of an n_fft frame (f^2 := 1 at DC), floored at min_db."""
    f2 = np.linspace(0, fs // 2, n_fft // 2 + 1) ** 2
    f2[0] = 1.0
    w = 2.0 + 20.0 * (2 * np.log10(12194) + 2 * np.log10(f2) - np.log10(f2 + 12194**2) - np.log10(f2 + 20.6**2)
                      - 0.5 * np.log10(f2 + 107.7**2) - 0.5 * np.log10(f2 + 737.9**2))
    return np.maximum(w, min_db)


def level_db(sound: np.ndarray, fs: int, n_fft: int | None = None) -> float:
    """`max(utils.compute_gain(sound, fs))`: the loudest frame's A-weighted power in dB, frame by frame in float64.

    BC learning's frames are 2,048 samples at 16 kHz and 4,096 at 44.1 kHz; `n_fft` gives another size.
    """
    n_fft = n_fft or {16000: 2048, 44100: 4096}[fs]
    window, weight = np.hanning(n_fft + 1)[:-1], 10 ** (a_weight(fs, n_fft) / 10)
    gains = [np.sum(np.abs(np.fft.rfft(window * sound[i : i + n_fft])) ** 2 * weight)
             for i in range(0, len(sound) - n_fft + 1, n_fft // 2)]
    return float(10 * np.log10(max(max(gains), 1e-8)))


def mix(sound1: np.ndarray, sound2: np.ndarray, r: float, fs: int, n_fft: int | None = None) -> np.ndarray:
    """`utils.mix`: p from the two levels and r (eq. 3), then (p s1 + (1 - p) s2) / sqrt(p^2 + (1 - p)^2)."""
    g1, g2 = level_db(sound1, fs, n_fft), level_db(sound2, fs, n_fft)
    p = 1.0 / (1 + 10 ** ((g1 - g2) / 20.0) * (1 - r) / r)
    return (sound1 * p + sound2 * (1 - p)) / np.sqrt(p**2 + (1 - p) ** 2)


def bc_example(sound1: np.ndarray, sound2: np.ndarray, r: float, fs: int, gain: float | None = None,
               n_fft: int | None = None) -> np.ndarray:
    """One BC training input from two preprocessed crops (`dataset.get_example`): `U.mix`, then the gain on the mix."""
    out = mix(sound1.astype(np.float64), sound2.astype(np.float64), r, fs, n_fft)
    return out if gain is None else out * gain
