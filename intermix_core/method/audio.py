"""Sound levels for BC-style mixing: A-weighted gain in dB, batched in float32 torch."""

from __future__ import annotations

import functools
import math

import torch

MIN_DB = -80.0
# BC learning's code measures levels only at its two rates (utils.compute_gain): frames of 2,048 samples
# at 16 kHz (128 ms) and 4,096 at 44.1 kHz (92.9 ms). Other rates keep the 16 kHz frame duration.
_REFERENCE_FFT = {16000: 2048, 44100: 4096}
FRAME_SECONDS = 0.128


def fft_size(sample_rate: int) -> int:
    """Level frame size: the reference's at 16 and 44.1 kHz, else the even length nearest 128 ms (8 kHz: 1,024)."""
    if sample_rate in _REFERENCE_FFT:
        return _REFERENCE_FFT[sample_rate]
    return max(2, 2 * round(FRAME_SECONDS * sample_rate / 2))


@functools.lru_cache(maxsize=16)
def _a_weight_db(sample_rate: int, n_fft: int, min_db: float = MIN_DB) -> torch.Tensor:
    """A-weighting in dB at the rfft bin frequencies (f^2 set to 1 at DC), floored at `min_db`."""
    freq = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)
    f2 = freq**2
    f2[0] = 1.0
    lg = torch.log10
    w = 2.0 + 20.0 * (
        2 * math.log10(12194)
        + 2 * lg(f2)
        - lg(f2 + 12194**2)
        - lg(f2 + 20.6**2)
        - 0.5 * lg(f2 + 107.7**2)
        - 0.5 * lg(f2 + 737.9**2)
    )
    return w.clamp(min=min_db)


@functools.lru_cache(maxsize=16)
def _weights(sample_rate: int, n_fft: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(periodic Hann window, linear A-weights repeated for (re, im) pairs) as float32 on `device`, cached."""
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=device)
    linear = (10.0 ** (_a_weight_db(sample_rate, n_fft) / 10.0)).to(torch.float32).to(device)
    return window, linear.repeat_interleave(2)


@torch.no_grad()
def a_weighted_level_db(x: torch.Tensor, sample_rate: int, n_fft: int | None = None) -> torch.Tensor:
    """Level in dB of each waveform in a batch (B, T): max over frames of the A-weighted power.

    Frames of `n_fft` (default `fft_size(sample_rate)`) with hop n_fft/2 and a periodic Hann window; per frame
    g = sum(|rfft|^2 * 10^(w/10)), floored at 10^(-8); the level is max(10 log10 g).
    A waveform shorter than one frame is zero-padded to one frame.
    """
    if x.dim() == 1:
        x = x.unsqueeze(0)
    x = x.reshape(x.shape[0], -1).to(torch.float32)
    n_fft = n_fft or fft_size(sample_rate)
    if x.shape[1] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[1]))
    window, linear = _weights(sample_rate, n_fft, str(x.device))
    frames = x.unfold(1, n_fft, n_fft // 2) * window  # (B, F, n_fft)
    spec = torch.view_as_real(torch.fft.rfft(frames)).flatten(2)  # (B, F, 2 (n_fft/2 + 1)): re, im, re, ...
    gain = (spec.square() @ linear).clamp(min=10.0 ** (MIN_DB / 10.0))  # (B, F): sum |X|^2 10^(w/10)
    return 10.0 * torch.log10(gain).amax(dim=1)
