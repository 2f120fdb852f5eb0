"""The paper's equations against hand-computed values: levels (A-weighting), eq. 3, eqs. 4-5, eq. 2."""

import math

import numpy as np
import pytest
import torch

from intermix_core.audio import a_weighted_level_db, fft_size
from intermix_core.config import STRATEGIES
from intermix_core.mixing import (
    Mixer, draw_partners, interfere, linear_mix, rotate_phase, safe_sqrt, sound_mix_ratio,
)


def reference_level_db(sound: np.ndarray, fs: int) -> float:
    """The level as REFERENCE.md describes it, frame by frame in float64 (the slow reference loop)."""
    n_fft = 2048 if fs <= 16000 else 4096
    freq = np.linspace(0, fs // 2, n_fft // 2 + 1)
    f2 = freq**2
    f2[0] = 1.0
    w = 2.0 + 20 * (2 * np.log10(12194) + 2 * np.log10(f2) - np.log10(f2 + 12194**2) - np.log10(f2 + 20.6**2)
                    - 0.5 * np.log10(f2 + 107.7**2) - 0.5 * np.log10(f2 + 737.9**2))
    w = np.maximum(w, -80.0)
    window = np.hanning(n_fft + 1)[:-1]
    gains = []
    for i in range(0, len(sound) - n_fft + 1, n_fft // 2):
        spec = np.fft.rfft(window * sound[i : i + n_fft])
        gains.append(np.sum(np.abs(spec) ** 2 * 10 ** (w / 10)))
    return float(10 * np.log10(max(max(gains), 1e-8)))


@pytest.mark.parametrize("fs", [16000, 44100])
def test_one_khz_tone_level_matches_parseval(fs):
    # A-weighting is ~0 dB at 1 kHz, so the level is the windowed tone's power:
    # sum_k |X_k|^2 over the one-sided spectrum ~ N/2 * sum (w x)^2 = N/2 * N * (3/8) * A^2/2.
    n, amp = fft_size(fs), 0.5
    t = torch.arange(fs) / fs
    x = amp * torch.sin(2 * math.pi * 1000.0 * t)
    expected = 10 * math.log10(3 * n * n * amp**2 / 32)
    got = float(a_weighted_level_db(x.unsqueeze(0), fs)[0])
    assert got == pytest.approx(expected, abs=0.15)


def test_a_weighting_attenuates_100hz_by_19db():
    fs = 16000
    t = torch.arange(fs) / fs
    tones = torch.stack([torch.sin(2 * math.pi * f * t) for f in (1000.0, 100.0)])
    g = a_weighted_level_db(tones, fs)
    assert float(g[0] - g[1]) == pytest.approx(19.1, abs=0.3)  # IEC 61672 table: -19.1 dB at 100 Hz


@pytest.mark.parametrize("fs", [16000, 44100])
def test_batched_level_equals_reference_loop(fs):
    rng = np.random.default_rng(0)
    sounds = rng.normal(0, 0.1, size=(3, 20000)) * np.linspace(0, 1, 20000)
    sounds[2] = 0.0  # silence: floored at -80 dB
    got = a_weighted_level_db(torch.from_numpy(sounds).float(), fs).numpy()
    want = [reference_level_db(s, fs) for s in sounds]
    np.testing.assert_allclose(got, want, atol=0.01)
    assert got[2] == pytest.approx(-80.0)


def test_sound_mix_ratio_equals_r_for_equal_levels_and_hand_value():
    r = torch.tensor([0.1, 0.5, 0.9])
    g = torch.tensor([-3.0, 10.0, 42.0])
    torch.testing.assert_close(sound_mix_ratio(r, g, g), r)
    # G_i - G_j = 20 dB and r = 0.5: p = 1 / (1 + 10 * 1) = 1/11
    p = sound_mix_ratio(torch.tensor([0.5]), torch.tensor([20.0]), torch.tensor([0.0]))
    assert float(p) == pytest.approx(1 / 11)


def test_interference_phase_zero_and_pi():
    h_i, h_j = torch.tensor([[4.0, 1.0, 9.0]]), torch.tensor([[1.0, 9.0, 0.25]])
    p = torch.tensor([0.3])
    n = math.sqrt(0.3**2 + 0.7**2)
    a, b = 0.3 * h_i / n, 0.7 * h_j / n
    torch.testing.assert_close(interfere(h_i, h_j, p, torch.tensor([0.0])), (a.sqrt() + b.sqrt()) ** 2)
    torch.testing.assert_close(interfere(h_i, h_j, p, torch.tensor([math.pi])), (a.sqrt() - b.sqrt()) ** 2)
    # phi = pi/2: no interference term, the normalized p-mix of eq. 4
    torch.testing.assert_close(interfere(h_i, h_j, p, torch.tensor([math.pi / 2])), linear_mix(h_i, h_j, p, True))


def test_interference_negative_products():
    h_i, h_j = torch.tensor([[2.0, -2.0]]), torch.tensor([[-8.0, -8.0]])
    p, phi = torch.tensor([0.5]), torch.tensor([0.0])
    a, b = h_i * 0.5 / math.sqrt(0.5), h_j * 0.5 / math.sqrt(0.5)
    zero = interfere(h_i, h_j, p, phi, negative_product="zero")
    signed = interfere(h_i, h_j, p, phi, negative_product="signed")
    # first element: signs differ -> "zero" drops the term, "signed" subtracts 2 sqrt(|ab|)
    assert float(zero[0, 0]) == pytest.approx(float(a[0, 0] + b[0, 0]))
    assert float(signed[0, 0]) == pytest.approx(float(a[0, 0] + b[0, 0] - 2 * (a[0, 0] * b[0, 0]).abs().sqrt()))
    # second element: both negative, product positive -> both conventions agree
    assert float(zero[0, 1]) == pytest.approx(float(signed[0, 1]))


def test_safe_sqrt_is_exact_above_eps_and_has_finite_gradient_at_zero():
    x = torch.tensor([0.0, 1e-9, 1e-6, 0.25, 4.0], requires_grad=True)
    y = safe_sqrt(x, 1e-6)
    torch.testing.assert_close(y[2:], torch.tensor([1e-3, 0.5, 2.0]))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.max() <= 1e3 + 1e-6


def test_interfere_gradient_finite_at_relu_zeros():
    h_i = torch.relu(torch.randn(4, 64)).requires_grad_(True)
    h_j = torch.relu(torch.randn(4, 64)).requires_grad_(True)
    out = interfere(h_i, h_j, torch.rand(4), torch.rand(4) * 3 - 1.5)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(h_i.grad).all() and torch.isfinite(h_j.grad).all()


def test_rotate_phase():
    x = torch.randn(2, 256)
    x = x - x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(rotate_phase(x, torch.zeros(2)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_phase(x, torch.full((2,), math.pi)), -x, atol=1e-5, rtol=0)


def test_partners_are_from_other_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    for _ in range(20):
        partner, has = draw_partners(y, g)
        assert has.all() and (y[partner] != y).all()
    partner, has = draw_partners(torch.tensor([5, 5, 5]), g)
    assert not has.any() and partner.tolist() == [0, 1, 2]


def test_mixed_labels_use_r_and_layers_are_drawn_from_L():
    mixer = Mixer(STRATEGIES["intermix"], num_classes=4, sample_rate=16000, seed=0)
    x, y = torch.randn(16, 4096) * 0.1, torch.arange(16) % 4
    layers = set()
    for _ in range(40):
        b = mixer.draw(x, y)
        layers.add(b.layer)
        expected = b.r[:, None] * torch.eye(4)[y] + (1 - b.r[:, None]) * torch.eye(4)[y[b.partner]]
        torch.testing.assert_close(b.targets, expected)
        assert (b.phi.abs() <= math.pi + 1e-6).all()
    assert layers == {1, 2, 3, 4}
    assert Mixer(STRATEGIES["standard"], 4, 16000, 0).draw(x, y) is None
    assert {Mixer(STRATEGIES["bc"], 4, 16000, s).draw(x, y).layer for s in range(5)} == {0}


def test_bc_mix_at_input_matches_eq3_by_hand():
    mixer = Mixer(STRATEGIES["bc"], num_classes=2, sample_rate=16000, seed=1)
    x = torch.randn(2, 4096) * torch.tensor([[0.5], [0.05]])
    y = torch.tensor([0, 1])
    b = mixer.draw(x, y)
    g = a_weighted_level_db(x, 16000)
    p = 1 / (1 + 10 ** ((g[0] - g[1]) / 20) * (1 - b.r[0]) / b.r[0])
    want = (p * x[0] + (1 - p) * x[1]) / torch.sqrt(p**2 + (1 - p) ** 2)
    torch.testing.assert_close(b(x)[0], want, atol=1e-5, rtol=1e-5)


def reference_interfere(h_i, h_j, p, phi, negative_product="zero", eps=1e-6):
    """Eqs. 4-5 written plainly, with autograd doing the backward pass (the fused version must agree)."""
    n = torch.sqrt(p**2 + (1 - p) ** 2)
    a, b = (p / n)[:, None] * h_i, ((1 - p) / n)[:, None] * h_j
    prod = a * b
    if negative_product == "zero":
        root = safe_sqrt(torch.relu(prod), eps)
    else:
        root = torch.sign(prod) * safe_sqrt(prod.abs(), eps)
    return a + b + 2 * root * torch.cos(phi)[:, None]


@pytest.mark.parametrize("negative_product", ["zero", "signed"])
def test_fused_interference_matches_plain_autograd(negative_product):
    torch.manual_seed(0)
    # values spanning negative, tiny (below eps) and ordinary products
    h_i = (torch.randn(3, 200, dtype=torch.float64) * torch.logspace(-5, 0, 200, dtype=torch.float64))
    h_j = torch.randn(3, 200, dtype=torch.float64)
    p, phi = torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) * 3 - 1.5
    hi1, hj1 = h_i.clone().requires_grad_(True), h_j.clone().requires_grad_(True)
    hi2, hj2 = h_i.clone().requires_grad_(True), h_j.clone().requires_grad_(True)
    out1 = interfere(hi1, hj1, p, phi, negative_product=negative_product)
    out2 = reference_interfere(hi2, hj2, p, phi, negative_product)
    torch.testing.assert_close(out1, out2)
    g = torch.randn_like(out1)
    (out1 * g).sum().backward()
    (out2 * g).sum().backward()
    torch.testing.assert_close(hi1.grad, hi2.grad)
    torch.testing.assert_close(hj1.grad, hj2.grad)


def test_detached_interference_passes_only_the_linear_gradient():
    h_i = torch.rand(2, 10, requires_grad=True)
    out = interfere(h_i, torch.rand(2, 10), torch.full((2,), 0.5), torch.zeros(2), normalize=False, detach_term=True)
    out.sum().backward()
    torch.testing.assert_close(h_i.grad, torch.full((2, 10), 0.5))
