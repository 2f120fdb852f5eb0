"""Mixing as data: one routine serves Standard, mixup, BC learning, Speechmix and InterMix.

Pure functions hold the equations (eqs. 1-5 of the paper); `Mixer` draws, per batch and from a
seeded generator, the partner of each sample (a different class, inside the same batch: no second
forward pass), r, the phases and the layer m, and returns a `MixBatch` that the model applies at
stage m and that carries the mixed labels (eq. 2, always with r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from intermix_core.audio import a_weighted_level_db
from intermix_core.config import StrategyConfig


def sound_mix_ratio(r: torch.Tensor, g_i: torch.Tensor, g_j: torch.Tensor) -> torch.Tensor:
    """Eq. 3: p = 1 / (1 + 10^((G_i - G_j)/20) * (1 - r)/r), the ratio that makes x_i sound r-loud."""
    return 1.0 / (1.0 + 10.0 ** ((g_i - g_j) / 20.0) * (1.0 - r) / r)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _weights(w: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, 1-w), divided by sqrt(w^2 + (1-w)^2) when `normalize` (eqs. 3-4)."""
    wi, wj = w, 1.0 - w
    if normalize:
        n = torch.sqrt(wi.square() + wj.square())
        wi, wj = wi / n, wj / n
    return wi, wj


def linear_mix(h_i: torch.Tensor, h_j: torch.Tensor, w: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Eq. 1 (normalize=False, w=r) or eq. 3 (normalize=True, w=p), batched over dim 0."""
    wi, wj = _weights(w, normalize)
    return _expand(wi, h_i) * h_i + _expand(wj, h_j) * h_j


def safe_sqrt(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """sqrt for x >= 0 with a finite gradient: linear (x / sqrt(eps)) below eps, continuous at eps."""
    return torch.where(x > eps, torch.sqrt(x.clamp(min=eps)), x / math.sqrt(eps))


class _InterferenceTerm(torch.autograd.Function):
    """out = a + b + c * s(ab), s = the convention's square root; fused forward and analytic backward.

    s(x) = x / sqrt(max(|x|, eps)): sign(x) sqrt(|x|) for |x| >= eps, x / sqrt(eps) below (continuous
    at eps, slope at most 1/sqrt(eps)); with `signed` False, s is clamped at 0 (no term where ab < 0).
    Autograd through the plain expression costs about 3x more time and memory on large hidden maps.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, eps: float, signed: bool, detach: bool):
        prod = a * b
        s = prod * prod.abs().clamp_(min=eps).rsqrt_()
        if not signed:
            s.clamp_(min=0.0)
        ctx.save_for_backward(a, b, c)
        ctx.eps, ctx.signed, ctx.detach = eps, signed, detach
        return (a + b).addcmul_(s, c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, c = ctx.saved_tensors
        if ctx.detach:
            return grad, grad, None, None, None, None
        prod = a * b
        mag = prod.abs()
        # ds/dprod: 1/(2 sqrt|ab|) above eps, 1/sqrt(eps) below it, 0 where the term is clamped off
        slope = torch.where(mag >= ctx.eps, 0.5, 1.0) * mag.clamp_(min=ctx.eps).rsqrt_()
        if not ctx.signed:
            slope.masked_fill_(prod < 0, 0.0)
        gcs = slope.mul_(c).mul_(grad)  # grad * c * ds/dprod
        return torch.addcmul(grad, gcs, b), torch.addcmul(grad, gcs, a), None, None, None, None


def interfere(
    h_i: torch.Tensor,
    h_j: torch.Tensor,
    p: torch.Tensor,
    phi: torch.Tensor,
    *,
    normalize: bool = True,
    negative_product: str = "zero",
    sqrt_eps: float = 1e-6,
    detach_term: bool = False,
) -> torch.Tensor:
    """Eqs. 4-5: h = h_i' + h_j' + 2 sqrt(h_i' h_j') cos(phi), with h_i' = p h_i / n, h_j' = (1-p) h_j / n.

    p and phi are per sample (B,). Where h_i' h_j' < 0 the square root is not real: "zero" drops the
    interference term there (the term is exactly eq. 5 wherever eq. 5 is real), "signed" uses
    sign(h_i' h_j') sqrt(|h_i' h_j'|). The sqrt is linearised below `sqrt_eps`, so forward and
    backward stay finite at every ReLU zero. `detach_term` stops the gradient through the term
    (the authors' code does this).
    """
    if negative_product not in ("zero", "signed"):
        raise ValueError(f"negative_product must be 'zero' or 'signed', got {negative_product!r}")
    wi, wj = _weights(p, normalize)
    a = _expand(wi, h_i) * h_i
    b = _expand(wj, h_j) * h_j
    c = _expand(2.0 * torch.cos(phi), h_i)
    return _InterferenceTerm.apply(a, b, c, sqrt_eps, negative_product == "signed", detach_term)


def rotate_phase(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Shift every frequency component of each waveform (B, T) by the angle theta (B,): irfft(rfft(x) e^{i theta})."""
    spec = torch.fft.rfft(x, dim=-1)
    rot = torch.polar(torch.ones_like(theta), theta).unsqueeze(-1)
    return torch.fft.irfft(spec * rot, n=x.shape[-1], dim=-1)


def draw_partners(y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, a random partner index of a different class in the batch; (partner, has_partner)."""
    different = y.unsqueeze(1) != y.unsqueeze(0)  # (B, B)
    has = different.any(dim=1)
    weights = different.to(torch.float32)
    weights[~has, ~has] = 1.0  # a sample alone in its class pairs with itself (and is left unmixed)
    partner = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    partner = torch.where(has, partner, torch.arange(len(y), device=y.device))
    return partner, has


@dataclass
class MixBatch:
    """One batch's draw: applied by the model at stage `layer`; carries the mixed targets."""

    strategy: StrategyConfig
    layer: int
    partner: torch.Tensor  # (B,) index of x_j for each x_i
    r: torch.Tensor  # (B,) label weight of x_i (eq. 2)
    phi: torch.Tensor  # (B,) phase difference phi_i - phi_j
    theta: torch.Tensor  # (B,) phase phi_i of each sample (authors'-code waveform rotation)
    targets: torch.Tensor  # (B, C) mixed labels
    levels: torch.Tensor | None  # (B,) A-weighted input levels in dB (p-weighting on inputs)
    sample_rate: int

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate each waveform's phase by its own phi_i (authors' code only); identity otherwise."""
        return rotate_phase(x, self.theta.to(x.dtype)) if self.strategy.rotate_input_phase else x

    def weight(self, h: torch.Tensor) -> torch.Tensor:
        """The mixing weight of h_i: r (r-weighting) or the sound mixing ratio p (eq. 3)."""
        s = self.strategy
        if s.weighting == "r":
            return self.r
        if s.gains_on == "hidden":
            g = a_weighted_level_db(h.detach().flatten(1), 44100)
        else:
            g = self.levels
        return sound_mix_ratio(self.r, g, g[self.partner])

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Mix h (B, ...) with its partners h[partner] at this batch's layer."""
        s = self.strategy
        w = self.weight(h).to(h.device)
        h_j = h[self.partner]
        if not s.interference:
            return linear_mix(h, h_j, w, s.normalize)
        return interfere(
            h,
            h_j,
            w,
            self.phi.to(h.device),
            normalize=s.normalize,
            negative_product=s.negative_product,
            sqrt_eps=s.sqrt_eps,
            detach_term=s.detach_interference,
        )


class Mixer:
    """Draws a MixBatch per training batch from its own seeded generator (state saved in checkpoints)."""

    def __init__(self, strategy: StrategyConfig, num_classes: int, sample_rate: int, seed: int) -> None:
        self.strategy = strategy
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.generator = torch.Generator().manual_seed(seed)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot labels (B, C) for unmixed training."""
        return F.one_hot(y, self.num_classes).to(torch.float32)

    def draw(self, x: torch.Tensor, y: torch.Tensor) -> MixBatch | None:
        """Draw partners, r, phases and the layer for a batch (x: (B, T) on CPU or GPU); None for Standard."""
        s = self.strategy
        if not s.mix:
            return None
        g = self.generator
        n = len(y)
        y_cpu = y.cpu()
        partner, has = draw_partners(y_cpu, g)
        r = torch.where(has, torch.rand(n, generator=g), torch.ones(n))
        phases = (torch.rand(n, generator=g) * 2.0 - 1.0) * s.phase_max  # phi_i ~ U[-phase_max, phase_max]
        phi = phases - phases[partner]
        layer = s.layers[int(torch.randint(len(s.layers), (1,), generator=g))]
        onehot = self.targets(y_cpu)
        targets = _expand(r, onehot) * onehot + _expand(1.0 - r, onehot) * onehot[partner]
        levels = None
        if s.weighting == "p" and s.gains_on == "input":
            levels = a_weighted_level_db(x, self.sample_rate).cpu()
        dev = x.device
        return MixBatch(
            strategy=s,
            layer=layer,
            partner=partner.to(dev),
            r=r.to(dev),
            phi=phi.to(dev),
            theta=phases.to(dev),
            targets=targets.to(dev),
            levels=None if levels is None else levels.to(dev),
            sample_rate=self.sample_rate,
        )
