"""Mixing as data: one routine serves Standard, mixup, BC learning, Speechmix and InterMix.

Pure functions hold the equations (eqs. 1-5 of the paper); `Mixer` draws, per batch and from seeded
generators, the partner of each sample (a different class, inside the same batch: no second forward
pass), r, the phases and the layer m, and returns a `MixBatch`: the (phase-shifted) inputs, the mix
the model applies at stage m, and the mixed labels (eq. 2, always with r). Gain augmentation, the
last step before the network (section 4), is applied here: to the mixed waveform when the mix is
in the input space (layer 0; BC learning's `dataset.py` gains the output of `U.mix`), to each
input before the network otherwise (no mixed waveform exists then).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intermix_core.config import StrategyConfig
from intermix_core.method.audio import a_weighted_level_db
from intermix_core.method.bank import apply_gain
from intermix_core.method.fused import fused
from intermix_core.models import at_least_float32

# the authors' utils.mixup_sound measures hidden-feature levels with the 44.1 kHz A-weighting path
HIDDEN_GAIN_RATE = 44100


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


@fused
def _term_forward(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, signed: bool) -> torch.Tensor:
    """a + b + c * s(ab), s the exact square root (signed, or 0 where ab < 0)."""
    prod = a * b
    s = prod.abs().sqrt_().copysign_(prod) if signed else prod.clamp_(min=0.0).sqrt_()
    return (a + b).addcmul_(s, c)


@fused
def _term_backward(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, eps: float, signed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a + b + c * s(ab) for a and b, with the slope of s capped below eps."""
    prod = a * b
    slope = prod.abs().clamp_(min=eps).rsqrt_().mul_(0.5)  # ds/dprod, bounded
    if not signed:
        slope = slope.masked_fill_(prod < 0, 0.0)
    gcs = slope.mul_(c).mul_(grad)  # grad * c * ds/dprod
    return torch.addcmul(grad, gcs, b), torch.addcmul(grad, gcs, a)


class _InterferenceTerm(torch.autograd.Function):
    """out = a + b + c * s(ab): eq. 5 with s the exact square root forward, fused with an analytic backward.

    s(x) = sqrt(x) for x >= 0; for x < 0, 0 ("zero") or -sqrt(|x|) (`signed`). The backward uses
    ds/dx = 1 / (2 sqrt(max(|x|, eps))): exact wherever |x| >= eps, capped at 1 / (2 sqrt(eps)) below
    (the true slope is infinite at 0, every ReLU zero), and 0 where "zero" drops the term. Autograd
    through the plain expression costs about 3x more time and memory on large hidden maps; on a GPU
    each pass is one compiled kernel (intermix_core.method.fused).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, eps: float, signed: bool, detach: bool):
        ctx.save_for_backward(a, b, c)
        ctx.eps, ctx.signed, ctx.detach = eps, signed, detach
        return _term_forward(a, b, c, signed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, c = ctx.saved_tensors
        if ctx.detach:
            return grad, grad, None, None, None, None
        ga, gb = _term_backward(grad, a, b, c, ctx.eps, ctx.signed)
        return ga, gb, None, None, None, None


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
    interference term there (the result is exactly eq. 5 wherever eq. 5 is real), "signed" uses
    sign(h_i' h_j') sqrt(|h_i' h_j'|). The forward pass is exact; the backward slope of the root is
    capped below `sqrt_eps`, so gradients stay finite at every ReLU zero. `detach_term` stops the
    gradient through the term (the authors' code does this).
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
    """For each sample, a uniformly drawn partner of a different class in the batch; (partner, has_partner).

    Runs on y's device without a host sync: the argmax of uniform scores over the allowed partners.
    A sample whose class fills the whole batch is its own partner (and is left unmixed, r = 1).
    """
    n = len(y)
    different = y.unsqueeze(1) != y.unsqueeze(0)  # (B, B)
    has = different.any(dim=1)
    scores = torch.rand((n, n), generator=generator, device=y.device).masked_fill_(~different, -1.0)
    partner = torch.where(has, scores.argmax(dim=1), torch.arange(n, device=y.device))
    return partner, has


def adjacent_partners(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' pairing: rows 2k and 2k+1 mix with each other; (partner, has_partner)."""
    if len(y) % 2:
        raise ValueError(f"adjacent pairing needs an even number of rows, got {len(y)}")
    partner = torch.arange(len(y), device=y.device) ^ 1
    return partner, y != y[partner]


@dataclass
class MixBatch:
    """One batch's draw: `inputs` go into the model, which applies the mix at stage `layer`; carries the targets."""

    strategy: StrategyConfig
    layer: int
    inputs: torch.Tensor  # (B, T) the waveforms the model takes: phase-shifted by theta when rotate_input_phase
    partner: torch.Tensor  # (B,) index of x_j for each x_i
    r: torch.Tensor  # (B,) label weight of x_i (eq. 2)
    phi: torch.Tensor  # (B,) phase difference phi_i - phi_j
    theta: torch.Tensor  # (B,) phase phi_i of each sample
    targets: torch.Tensor  # (B, C) mixed labels
    levels: torch.Tensor | None  # (B,) A-weighted levels of `inputs` in dB (p-weighting on inputs)
    # (B,) gain augmentation of the mix's output: set when the mix is the network's input (layer 0)
    out_gains: torch.Tensor | None = None

    def weight(self, h: torch.Tensor) -> torch.Tensor:
        """The mixing weight of h_i: r (r-weighting) or the sound mixing ratio p (eq. 3)."""
        s = self.strategy
        if s.weighting == "r":
            return self.r
        if s.gains_on == "hidden":  # the authors' code: levels of the flattened features, 44.1 kHz A-weighting
            g = a_weighted_level_db(h.detach().flatten(1), HIDDEN_GAIN_RATE)
        else:
            g = self.levels
        return sound_mix_ratio(self.r, g, g[self.partner])

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Mix h (B, ...) with its partners h[partner] at this batch's layer, in float32 (also under bf16 autocast; float64 stays float64)."""
        s = self.strategy
        h = at_least_float32(h)
        w = self.weight(h)
        h_j = h[self.partner]
        if not s.interference:
            out = linear_mix(h, h_j, w, s.normalize)
        else:
            out = interfere(
                h, h_j, w, self.phi, normalize=s.normalize, negative_product=s.negative_product,
                sqrt_eps=s.sqrt_eps, detach_term=s.detach_interference,
            )
        return apply_gain(out, self.out_gains)


class Mixer:
    """Draws a MixBatch per training batch from its own seeded generators (state saved in checkpoints).

    Partners, r and phases are drawn on the batch's device (no host sync, no host-to-device copy);
    the layer, which decides the forward pass's control flow, comes from a small CPU generator.
    """

    def __init__(self, strategy: StrategyConfig, num_classes: int, sample_rate: int, seed: int) -> None:
        self.strategy = strategy
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.seed = seed
        self.layer_generator = torch.Generator().manual_seed(seed)
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The device generator (created and seeded on first use on `device`)."""
        if self._generator is None or self._generator.device.type != torch.device(device).type:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def state(self) -> dict[str, torch.Tensor | str]:
        """Generator states for a checkpoint (tensors and strings only)."""
        out: dict[str, torch.Tensor | str] = {"layer": self.layer_generator.get_state()}
        if self._generator is not None:
            out["device"], out["device_type"] = self._generator.get_state(), self._generator.device.type
        return out

    def load_state(self, state: dict[str, torch.Tensor | str], device: torch.device) -> bool:
        """Restore `state()`; False if it came from another device type (the device draws then restart)."""
        self.layer_generator.set_state(state["layer"])  # type: ignore[arg-type]
        if "device" not in state:
            return True
        gen = self.generator(device)
        if state.get("device_type") != gen.device.type:
            return False
        gen.set_state(state["device"])  # type: ignore[arg-type]
        return True

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot labels (B, C) for unmixed training (a scatter: F.one_hot reads the labels' maximum on the host)."""
        return torch.zeros(len(y), self.num_classes, device=y.device).scatter_(1, y.unsqueeze(1), 1.0)

    def draw_layer(self) -> int:
        """The mixing layer of a batch, from the CPU generator: host-side by design (it picks the forward pass's
        control flow), so reading it never waits for the device."""
        s = self.strategy
        return s.layers[int(torch.randint(len(s.layers), (1,), generator=self.layer_generator))]

    def draw(self, x: torch.Tensor, y: torch.Tensor, gains: torch.Tensor | None = None) -> MixBatch | None:
        """Draw partners, r, phases and the layer for a batch (x: (B, T), y: (B,), same device); None for Standard.

        `gains` (B,), the gain augmentation of the network's inputs, multiplies the mixed waveform
        when the layer drawn is 0 (the levels behind p are then those of the sounds before gain, as in
        BC learning's `U.mix`), else each (phase-shifted) input, whose levels p then sees.
        """
        s = self.strategy
        if not s.mix:
            return None
        g = self.generator(x.device)
        n = len(y)
        partner, has = adjacent_partners(y) if s.pairing == "adjacent_pairs" else draw_partners(y, g)
        r = torch.where(has, torch.rand(n, generator=g, device=x.device), 1.0)
        theta = (torch.rand(n, generator=g, device=x.device) * 2.0 - 1.0) * s.phase_max  # phi_i ~ U[-max, max]
        layer = self.draw_layer()
        onehot = self.targets(y)
        targets = _expand(r, onehot) * onehot + _expand(1.0 - r, onehot) * onehot[partner]
        inputs = rotate_phase(x, theta.to(x.dtype)) if s.rotate_input_phase else x
        if gains is not None and layer != 0:  # hidden-space mixing: the gained inputs are what enters the network
            inputs = apply_gain(inputs, gains)
        levels = a_weighted_level_db(inputs, self.sample_rate) if s.weighting == "p" and s.gains_on == "input" else None
        return MixBatch(
            strategy=s, layer=layer, inputs=inputs, partner=partner, r=r, phi=theta - theta[partner], theta=theta,
            targets=targets, levels=levels, out_gains=gains if layer == 0 else None,
        )
