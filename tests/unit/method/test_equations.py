"""The paper's equations against hand-computed values: levels (A-weighting), eq. 3, eqs. 4-5, eq. 2."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from intermix_core.config import STRATEGIES
from intermix_core.method.audio import a_weighted_level_db, fft_size
from intermix_core.method.bc_reference import level_db as reference_level_db  # utils.compute_gain, frame by frame
from intermix_core.method.mixing import (
    Mixer,
    adjacent_partners,
    draw_partners,
    interfere,
    linear_mix,
    rotate_phase,
    sound_mix_ratio,
)


def test_level_frames_keep_the_reference_duration():
    # the reference's own rates keep its sizes; other rates keep the 16 kHz frame duration (128 ms)
    assert [fft_size(fs) for fs in (8000, 16000, 22050, 44100)] == [1024, 2048, 2822, 4096]
    assert all(fft_size(fs) % 2 == 0 for fs in (8000, 11025, 22050, 32000, 48000))


@pytest.mark.parametrize("fs", [8000, 16000, 22050, 44100])
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


@pytest.mark.parametrize("fs", [8000, 16000, 22050, 44100])
def test_batched_level_equals_reference_loop(fs):
    rng = np.random.default_rng(0)
    sounds = rng.normal(0, 0.1, size=(3, 20000)) * np.linspace(0, 1, 20000)
    sounds[2] = 0.0  # silence: floored at -80 dB
    got = a_weighted_level_db(torch.from_numpy(sounds).float(), fs).numpy()
    want = [reference_level_db(s, fs, fft_size(fs)) for s in sounds]
    np.testing.assert_allclose(got, want, atol=0.01)
    assert got[2] == pytest.approx(-80.0)


def test_sound_mix_ratio_equals_r_for_equal_levels_and_hand_value():
    r = torch.tensor([0.1, 0.5, 0.9])
    g = torch.tensor([-3.0, 10.0, 42.0])
    torch.testing.assert_close(sound_mix_ratio(r, g, g), r)
    # G_i - G_j = 20 dB and r = 0.5: p = 1 / (1 + 10 * 1) = 1/11
    p = sound_mix_ratio(torch.tensor([0.5]), torch.tensor([20.0]), torch.tensor([0.0]))
    assert float(p) == pytest.approx(1 / 11)
    # r = 0.25 tells the readings of eq. 3 apart: (1 - r)/r = 3 multiplies 10^(dG/20) (BC learning's code),
    # it is not inside the exponent: 6 dB louder x_i -> p = 1 / (1 + 1.99526 * 3) = 0.143148
    p = float(sound_mix_ratio(torch.tensor([0.25], dtype=torch.float64), torch.tensor([6.0]).double(), torch.zeros(1).double()))
    assert p == pytest.approx(1 / (1 + 10 ** (6 / 20) * 3), rel=1e-12)
    assert p == pytest.approx(0.143148, abs=1e-6)
    assert abs(p - 1 / (1 + 10 ** ((6 + 3) / 20))) > 0.05  # the exponent reading gives 0.262


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


def test_root_is_exact_in_the_forward_pass_below_eps():
    # h_i' h_j' = 1e-7 (quiet waveforms, layer 0): the term is 2 sqrt(1e-7) = 6.3e-4, not the 2e-4 of a
    # root linearised below eps = 1e-6; with weights 0.5 / 0.5 (r-weighting, no normalisation) h' = h / 2
    h_i, h_j = torch.tensor([[2e-7]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    half, zero = torch.tensor([0.5], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    out = interfere(h_i, h_j, half, zero, normalize=False)
    assert float(out - 1e-7 - 1.0) == pytest.approx(2 * math.sqrt(1e-7), rel=1e-9)
    # its backward slope is the bounded one: d/dh_i of 2 sqrt(h_i h_j / 4) capped at eps
    h = h_i.clone().requires_grad_(True)
    interfere(h, h_j, half, zero, normalize=False).sum().backward()
    assert float(h.grad) == pytest.approx(0.5 + 2 * 0.5 * 1e3 * 0.5 * 1.0, rel=1e-9)  # 0.5 + c * slope * b' * 0.5


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


@pytest.mark.parametrize("length", [1000, 1001, 66650, 21503])
def test_rotate_phase_matches_numpy_for_even_and_odd_lengths(length):
    rng = np.random.default_rng(length)
    x = rng.normal(size=(3, length))
    theta = rng.uniform(-math.pi / 2, math.pi / 2, size=3)
    want = np.stack([np.fft.irfft(np.fft.rfft(x[k]) * np.exp(1j * theta[k]), n=length) for k in range(3)])
    got = rotate_phase(torch.from_numpy(x), torch.from_numpy(theta)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    got32 = rotate_phase(torch.from_numpy(x).float(), torch.from_numpy(theta).float()).numpy()
    assert np.abs(got32 - want).max() < 1e-4 * np.abs(want).max()


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
        # phi_i ~ U[-pi/2, pi/2] per sample, and phi = phi_i - phi_partner enters eq. 5
        assert (b.theta.abs() <= math.pi / 2).all() and b.theta.std() > 0.3
        torch.testing.assert_close(b.phi, b.theta - b.theta[b.partner])
    assert layers == {1, 2, 3, 4}
    assert Mixer(STRATEGIES["standard"], 4, 16000, 0).draw(x, y) is None
    assert {Mixer(STRATEGIES["bc"], 4, 16000, s).draw(x, y).layer for s in range(5)} == {0}


def _phases(strategy, batches: int = 50, seed: int = 11) -> np.ndarray:
    """The phases phi_i a mixer draws over `batches` batches of 16 (fixed seed)."""
    mixer = Mixer(strategy, num_classes=4, sample_rate=16000, seed=seed)
    x, y = torch.zeros(16, 64), torch.arange(16) % 4
    return torch.cat([mixer.draw(x, y).theta for _ in range(batches)]).double().numpy()


@pytest.mark.parametrize("name", ["intermix", "intermix_vanilla", "intermix_hidden", "intermix_official"])
def test_phases_are_uniform_on_minus_to_plus_half_pi(name):
    """Section 3.1: phi_i ~ U[-pi/2, pi/2]. Kolmogorov-Smirnov on 800 draws of a fixed seed; U[-pi/4, pi/4] fails it."""
    half_pi = stats.uniform(loc=-math.pi / 2, scale=math.pi)
    theta = _phases(STRATEGIES[name])
    assert stats.kstest(theta, half_pi.cdf).pvalue > 0.01
    narrow = _phases(STRATEGIES[name].model_copy(update={"phase_max": math.pi / 4}))
    assert stats.kstest(narrow, half_pi.cdf).pvalue < 1e-6


@pytest.mark.parametrize("name", ["intermix", "intermix_vanilla", "intermix_hidden", "intermix_official"])
def test_interference_presets_feed_the_model_phase_shifted_inputs(name):
    """Section 3.1: each x_i is shifted by its own phi_i, the same draw that enters cos(phi_i - phi_j)."""
    x, y = torch.randn(8, 3001) * 0.1, torch.arange(8) % 4
    b = Mixer(STRATEGIES[name], num_classes=4, sample_rate=16000, seed=3).draw(x, y)
    torch.testing.assert_close(b.inputs, rotate_phase(x, b.theta))
    assert not torch.allclose(b.inputs, x, atol=1e-3)
    if b.levels is not None:  # p is computed from the levels of the shifted sounds the model sees
        torch.testing.assert_close(b.levels, a_weighted_level_db(b.inputs, 16000))


@pytest.mark.parametrize("name", ["intermix_no_rotation", "bc", "speechmix", "mixup"])
def test_other_presets_leave_the_inputs_alone(name):
    x, y = torch.randn(8, 3001) * 0.1, torch.arange(8) % 4
    b = Mixer(STRATEGIES[name], num_classes=4, sample_rate=16000, seed=3).draw(x, y)
    assert b.inputs is x


def test_adjacent_pairing_mixes_rows_2k_and_2k_plus_1():
    y = torch.tensor([0, 1, 2, 2, 3, 0])
    partner, has = adjacent_partners(y)
    assert partner.tolist() == [1, 0, 3, 2, 5, 4] and has.tolist() == [True, True, False, False, True, True]
    b = Mixer(STRATEGIES["intermix_official"], num_classes=4, sample_rate=44100, seed=0).draw(torch.randn(6, 5000), y)
    assert b.partner.tolist() == [1, 0, 3, 2, 5, 4]
    assert b.r[2] == 1.0 and b.r[3] == 1.0 and len(set(b.r[[0, 1, 4, 5]].tolist())) == 4  # its own r per row
    with pytest.raises(ValueError, match="even number of rows"):
        adjacent_partners(torch.tensor([0, 1, 2]))


def test_bc_mix_at_input_matches_eq3_by_hand():
    mixer = Mixer(STRATEGIES["bc"], num_classes=2, sample_rate=16000, seed=1)
    x = torch.randn(2, 4096) * torch.tensor([[0.5], [0.05]])
    y = torch.tensor([0, 1])
    b = mixer.draw(x, y)
    g = a_weighted_level_db(x, 16000)
    p = 1 / (1 + 10 ** ((g[0] - g[1]) / 20) * (1 - b.r[0]) / b.r[0])
    want = (p * x[0] + (1 - p) * x[1]) / torch.sqrt(p**2 + (1 - p) ** 2)
    torch.testing.assert_close(b(x)[0], want, atol=1e-5, rtol=1e-5)


def bounded_root(x, eps=1e-6):
    """sqrt(x) for x >= 0 with its derivative capped at 1/(2 sqrt(eps)): the value is exact, only the slope is bounded."""
    slope = 0.5 * torch.rsqrt(x.detach().clamp(min=eps))
    return torch.sqrt(x.detach()) + (x - x.detach()) * slope


def reference_interfere(h_i, h_j, p, phi, negative_product="zero", eps=1e-6):
    """Eqs. 4-5 written plainly, with autograd doing the backward pass (the fused version must agree)."""
    n = torch.sqrt(p**2 + (1 - p) ** 2)
    a, b = (p / n)[:, None] * h_i, ((1 - p) / n)[:, None] * h_j
    prod = a * b
    if negative_product == "zero":
        root = torch.where(prod >= 0, bounded_root(prod.clamp(min=0), eps), 0.0)
    else:
        root = torch.sign(prod) * bounded_root(prod.abs(), eps)
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
    # the forward pass is eq. 5 exactly, checked against the plain formula wherever the root is real
    n = torch.sqrt(p**2 + (1 - p) ** 2)
    a, b = (p / n)[:, None] * h_i, ((1 - p) / n)[:, None] * h_j
    real = a * b >= 0
    plain = a + b + 2 * torch.sqrt((a * b).clamp(min=0)) * torch.cos(phi)[:, None]
    assert real.sum() > 100 and (~real).sum() > 100
    torch.testing.assert_close(out1.detach()[real], plain[real], rtol=1e-12, atol=0)
    g = torch.randn_like(out1)
    (out1 * g).sum().backward()
    (out2 * g).sum().backward()
    torch.testing.assert_close(hi1.grad, hi2.grad)
    torch.testing.assert_close(hj1.grad, hj2.grad)
    # where |ab| >= eps the gradient is the true derivative of the plain formula
    hi3 = h_i.clone().requires_grad_(True)
    a3 = (p / n)[:, None] * hi3
    prod3 = a3 * b
    root3 = torch.sqrt(prod3.clamp(min=1e-300)) if negative_product == "zero" else torch.sign(prod3) * torch.sqrt(prod3.abs())
    ((a3 + b + 2 * root3 * torch.cos(phi)[:, None]) * g).sum().backward()
    ok = (prod3.detach().abs() >= 1e-6) & (real if negative_product == "zero" else torch.ones_like(real))
    assert ok.sum() > 100
    torch.testing.assert_close(hi1.grad[ok], hi3.grad[ok])


def test_detached_interference_passes_only_the_linear_gradient():
    h_i = torch.rand(2, 10, requires_grad=True)
    out = interfere(h_i, torch.rand(2, 10), torch.full((2,), 0.5), torch.zeros(2), normalize=False, detach_term=True)
    out.sum().backward()
    torch.testing.assert_close(h_i.grad, torch.full((2, 10), 0.5))


# ---------------------------------------------------------------- the authors' code, re-derived in numpy

def _np_a_weight(fs: int, n_fft: int) -> np.ndarray:
    freq_sq = np.linspace(0, fs // 2, n_fft // 2 + 1) ** 2
    freq_sq[0] = 1.0
    w = 2.0 + 20.0 * (2 * np.log10(12194) + 2 * np.log10(freq_sq) - np.log10(freq_sq + 12194**2)
                      - np.log10(freq_sq + 20.6**2) - 0.5 * np.log10(freq_sq + 107.7**2)
                      - 0.5 * np.log10(freq_sq + 737.9**2))
    return np.maximum(w, -80.0)


def _np_compute_gain(sound: np.ndarray, fs: int) -> np.ndarray:
    """utils.compute_gain of scaleracademy/InterMix-ICASSP on a batch (B, D): (B, frames) in dB."""
    n_fft = {16000: 2048, 44100: 4096}[fs]
    window, weight = np.hanning(n_fft + 1)[:-1], 10 ** (_np_a_weight(fs, n_fft) / 10)
    gains = [np.sum(np.abs(np.fft.rfft(window * sound[:, i : i + n_fft])) ** 2 * weight, axis=1)
             for i in range(0, sound.shape[1] - n_fft + 1, n_fft // 2)]
    return 10 * np.log10(np.maximum(np.stack(gains, axis=1), 10 ** (-80 / 10)))


def _np_official_mix(h: np.ndarray, r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """utils.mixup_sound + utils.mix: adjacent partners, gains of flattened features at 44.1 kHz, no normalisation."""
    flat = h.reshape(len(h), -1)
    partner = np.arange(len(h)) ^ 1
    s1, s2, phase_diff = flat, flat[partner], theta - theta[partner]
    g1, g2 = _np_compute_gain(s1, 44100).max(axis=1), _np_compute_gain(s2, 44100).max(axis=1)
    t = 1.0 / (1 + 10 ** ((g1 - g2) / 20.0) * (1 - r) / r)
    term = 2 * np.sqrt(s1 * t[:, None] * s2 * (1 - t[:, None])) * np.cos(phase_diff)[:, None]
    return (s1 * t[:, None] + s2 * (1 - t[:, None]) + term).reshape(h.shape)


def test_official_preset_mix_matches_the_authors_code_rederived_in_numpy():
    torch.manual_seed(0)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    h = torch.relu(torch.randn(8, 32, 10, 82)) * torch.linspace(0.1, 3.0, 8).view(-1, 1, 1, 1)  # EnvNet-v2 layer 2
    b = Mixer(STRATEGIES["intermix_official"], num_classes=8, sample_rate=44100, seed=4).draw(torch.randn(8, 5000), y)
    got = b(h).numpy()
    want = _np_official_mix(h.double().numpy(), b.r.double().numpy(), b.theta.double().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def _np_speechmix_mix(h: np.ndarray, r: np.ndarray) -> np.ndarray:
    """midas-research/speechmix utils.mixup_sound + utils.mix: adjacent partners, gains of the flattened features at
    44.1 kHz, the BC mix normalised by sqrt(t^2 + (1 - t)^2), no interference term."""
    flat = h.reshape(len(h), -1)
    s1, s2 = flat, flat[np.arange(len(h)) ^ 1]
    g1, g2 = _np_compute_gain(s1, 44100).max(axis=1), _np_compute_gain(s2, 44100).max(axis=1)
    t = (1.0 / (1 + 10 ** ((g1 - g2) / 20.0) * (1 - r) / r))[:, None]
    return ((s1 * t + s2 * (1 - t)) / np.sqrt(t**2 + (1 - t) ** 2)).reshape(h.shape)


def test_speechmix_official_mix_matches_its_code_rederived_in_numpy():
    torch.manual_seed(1)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    h = torch.relu(torch.randn(8, 32, 10, 82)) * torch.linspace(0.1, 3.0, 8).view(-1, 1, 1, 1)  # EnvNet-v2 layer 2
    x = torch.randn(8, 5000)
    b = Mixer(STRATEGIES["speechmix_official"], num_classes=8, sample_rate=44100, seed=4).draw(x, y)
    assert b.inputs is x and b.levels is None and b.layer in (1, 2, 3, 4)  # no phase shift; levels from h itself
    got = b(h).numpy()
    want = _np_speechmix_mix(h.double().numpy(), b.r.double().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    # the project's Speechmix (input levels, in-batch partners) is another mix of the same features
    paper = Mixer(STRATEGIES["speechmix"], num_classes=8, sample_rate=44100, seed=4).draw(x, y)
    assert not np.allclose(paper(h).numpy(), want, atol=1e-3)


def test_one_knob_presets_change_one_field_of_the_preset_they_test():
    """Each sensitivity cell differs from its paper preset in exactly the field it is about (docs/method.md)."""
    def diff(a: str, b: str) -> set[str]:
        da, db = STRATEGIES[a].model_dump(exclude={"name"}), STRATEGIES[b].model_dump(exclude={"name"})
        return {k for k in da if da[k] != db[k]}

    assert diff("intermix_detached", "intermix") == {"detach_interference"}
    assert diff("intermix_vanilla_signed", "intermix_vanilla") == {"negative_product"}
    assert diff("intermix_hidden_linear", "intermix_hidden") == {"interference"}
    assert diff("speechmix_official", "speechmix") == {"gains_on", "pairing"}


def test_signed_root_changes_vanilla_intermix_where_waveform_products_are_negative():
    """Layer 0 (the waveform): zeroed and signed conventions differ exactly where h_i' h_j' < 0."""
    x, y = torch.randn(4, 3001) * 0.1, torch.tensor([0, 1, 2, 3])
    zero = Mixer(STRATEGIES["intermix_vanilla"], num_classes=4, sample_rate=16000, seed=2).draw(x, y)
    signed = Mixer(STRATEGIES["intermix_vanilla_signed"], num_classes=4, sample_rate=16000, seed=2).draw(x, y)
    h = zero.inputs
    torch.testing.assert_close(signed.inputs, h)
    a = zero.r[:, None] * h
    bj = (1 - zero.r)[:, None] * h[zero.partner]
    negative = a * bj < 0
    out_zero, out_signed = zero(h), signed(h)
    assert negative.float().mean() > 0.3
    torch.testing.assert_close(out_zero[~negative], out_signed[~negative])
    want = (a + bj - 2 * torch.sqrt((a * bj).abs()) * torch.cos(zero.phi)[:, None])[negative]
    torch.testing.assert_close(out_signed[negative], want, atol=1e-6, rtol=1e-5)
