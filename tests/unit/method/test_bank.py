"""The device-resident data path against BC learning's reference preprocessing, clip by clip in numpy.

`intermix_core.method.bc_reference` transcribes the reference (and is value-tested here by hand); the batched
`intermix_core.method.bank` must return the same crops on the same draws, to float32 precision, and the gain
must land where BC learning puts it: on the mixed sound (input-space mixing), on each input otherwise.
"""

import math

import numpy as np
import pytest
import torch

from intermix_core.config import STRATEGIES, AugmentConfig
from intermix_core.data import load_prepared
from intermix_core.method.audio import a_weighted_level_db, fft_size
from intermix_core.method.bank import (
    ClipBank,
    CropDraw,
    PairSampler,
    draw_crops,
    eval_batch,
    train_batch,
    train_inputs,
)
from intermix_core.method.bc_reference import (
    bc_example,
    crop_starts,
    eval_crops,
    random_scale,
    train_crop,
    train_example,
)
from intermix_core.method.mixing import Mixer
from intermix_core.method.train import training_step
from intermix_core.models import create_model

T = 400


def clips(seed: int = 0) -> list[np.ndarray]:
    """int16 clips shorter, about equal to and longer than T, one of a single sample, full-scale values."""
    rng = np.random.default_rng(seed)
    lengths = [1, 37, T - 1, T, T + 1, 1000, 2345]
    out = [rng.integers(-32768, 32768, size=n).astype(np.int16) for n in lengths]
    out[4][:] = 32767  # a clipped clip
    return out


# ---------------------------------------------------------------- the reference, by hand

def test_random_scale_by_hand():
    s = np.array([0.0, 10.0, 20.0, 30.0])
    np.testing.assert_allclose(random_scale(s, 2.0), [0, 5, 10, 15, 20, 25, 30, 30])  # last: clamped at the end
    np.testing.assert_allclose(random_scale(s, 0.5), [0, 20])  # int(4 * 0.5) = 2 samples at positions 0, 2
    np.testing.assert_allclose(random_scale(s, 1.25), [0, 8, 16, 24, 30])  # ref = k / 1.25 = 0, .8, 1.6, 2.4, 3.2
    assert len(random_scale(np.ones(3), 0.1)) == 1


def test_train_crop_by_hand():
    s = np.arange(1, 6, dtype=np.int16)  # 1..5, T = 4: padded with 2 zeros each side
    np.testing.assert_array_equal(train_crop(s, 4, 0), [0, 0, 1, 2])
    np.testing.assert_array_equal(train_crop(s, 4, 5), [4, 5, 0, 0])
    assert crop_starts(5, 4) == 6  # starts 0..5
    with pytest.raises(ValueError, match="outside"):
        train_crop(s, 4, 6)


def test_gain_and_normalisation_by_hand():
    s = np.full(8, 16384, dtype=np.int16)
    x = train_example(s, 4, 2, gain=10 ** (6 / 20))
    np.testing.assert_allclose(x, 0.5 * 10 ** (6 / 20), rtol=1e-6)
    assert x.dtype == np.float32


def test_all_ten_eval_crops_by_hand():
    s = (np.arange(1, 1001) % 300).astype(np.int16)
    crops = eval_crops(s, T, 10)
    padded = np.concatenate([np.zeros(200), s, np.zeros(200)]) / 32768.0
    stride = (1400 - T) // 9  # 111
    assert crops.shape == (10, T)
    for i in range(10):
        np.testing.assert_allclose(crops[i], padded[i * stride : i * stride + T], rtol=0, atol=0)
    assert crops[0][:200].max() == 0 and crops[9][-1] == padded[9 * stride + T - 1]


# ---------------------------------------------------------------- batched path == reference

@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("gain", [False, True])
def test_train_batch_equals_the_reference_on_fixed_draws(scale: bool, gain: bool):
    data = clips()
    bank = ClipBank.from_arrays(data, np.arange(len(data)) % 3, length=T)
    rng = np.random.default_rng(1)
    idx = np.array([0, 1, 2, 3, 4, 5, 6, 6, 5, 2], dtype=np.int64)
    factors = 1.25 ** rng.uniform(-1, 1, size=len(idx)) if scale else None
    n_out = [max(int(len(data[k]) * f), 1) for k, f in zip(idx, factors)] if scale else [len(data[k]) for k in idx]
    starts = np.array([rng.integers(0, crop_starts(n, T)) for n in n_out])
    starts[:2] = [0, crop_starts(n_out[1], T) - 1]  # both extremes
    gains = (10 ** (rng.uniform(-6, 6, size=len(idx)) / 20)).astype(np.float32) if gain else None
    draw = CropDraw(
        clips=torch.from_numpy(idx), starts=torch.from_numpy(starts),
        factors=None if factors is None else torch.from_numpy(factors),
        gains=None if gains is None else torch.from_numpy(gains),
    )
    got = train_batch(bank, draw).numpy()
    want = np.stack([
        train_example(data[k], T, int(starts[b]), None if factors is None else float(factors[b]),
                      None if gains is None else float(gains[b]))
        for b, k in enumerate(idx)
    ])
    assert got.dtype == np.float32 and got.shape == (len(idx), T)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)


def test_eval_batch_equals_the_reference():
    data = clips(3)
    bank = ClipBank.from_arrays(data, np.zeros(len(data)), length=T)
    got = eval_batch(bank, torch.arange(len(data)), 10).numpy()
    want = np.concatenate([eval_crops(c, T, 10) for c in data])
    np.testing.assert_array_equal(got, want)
    got3 = eval_batch(bank, torch.tensor([5, 1]), 3).numpy()
    np.testing.assert_array_equal(got3, np.concatenate([eval_crops(data[5], T, 3), eval_crops(data[1], T, 3)]))


def test_random_draws_stay_in_their_ranges():
    data = clips()
    bank = ClipBank.from_arrays(data, np.zeros(len(data)), length=T)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(len(data)).repeat(300)
    d = draw_crops(bank, idx, AugmentConfig(scale=True, gain=True), g)
    assert (d.factors >= 1 / 1.25 - 1e-12).all() and (d.factors <= 1.25 + 1e-12).all()
    db = 20 * torch.log10(d.gains.double())
    assert db.min() >= -6 - 1e-5 and db.max() <= 6 + 1e-5 and db.std() > 3
    n_out = (bank.lengths[idx].double() * d.factors).floor().long().clamp(min=1)
    choices = n_out + 2 * (T // 2) - T + 1
    assert (d.starts >= 0).all() and (d.starts < choices).all()
    plain = draw_crops(bank, idx, AugmentConfig(), g)
    assert plain.factors is None and plain.gains is None
    # the first and last start occur for a clip with few choices (uniform over them)
    first = plain.starts[idx == 0]
    assert set(first.tolist()) == set(range(int(bank.lengths[0]) + 2 * (T // 2) - T + 1))


def test_same_generator_same_batches():
    data = clips()
    bank = ClipBank.from_arrays(data, np.zeros(len(data)), length=T)
    aug = AugmentConfig(scale=True, gain=True)
    a = train_batch(bank, draw_crops(bank, torch.arange(7), aug, torch.Generator().manual_seed(5)))
    b = train_batch(bank, draw_crops(bank, torch.arange(7), aug, torch.Generator().manual_seed(5)))
    assert torch.equal(a, b)


def test_pair_sampler_is_uniform_over_different_class_pairs():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])  # imbalanced, like UrbanSound8K
    sampler = PairSampler(labels, 3)
    rows = sampler.draw(60000, torch.Generator().manual_seed(0)).reshape(-1, 2)
    assert (labels[rows[:, 0]] != labels[rows[:, 1]]).all()
    counts = torch.zeros(8, 8)
    counts.index_put_((rows[:, 0], rows[:, 1]), torch.ones(len(rows)), accumulate=True)
    valid = labels[:, None] != labels[None, :]
    expected = len(rows) / int(valid.sum())  # the authors' retry loop: uniform over the 38 ordered pairs
    assert counts[~valid].sum() == 0
    assert ((counts[valid] - expected).abs() / math.sqrt(expected)).max() < 4.5


# ---------------------------------------------------------------- gain: after the mix, before the network

RATE, LENGTH = 22050, 8000  # the tiny prepared set (real demo clips at 22.05 kHz), crops of 8,000 samples


def _real_batch(tiny_data, seed: int = 0):
    """A bank of the 20 real clips of folds 1-2, fixed draws (scale and gain) for 10 of them, and the crops they give."""
    data = load_prepared(tiny_data)
    bank = ClipBank.from_prepared(data, [1, 2], length=LENGTH)
    clips_np = [c for f in (1, 2) for c in data.clips(f)]
    idx = torch.arange(0, 20, 2)  # ten clips, several classes
    draw = draw_crops(bank, idx, AugmentConfig(scale=True, gain=True), torch.Generator().manual_seed(seed))
    crops_np = [train_example(clips_np[k], LENGTH, int(st), float(f)) for k, st, f in zip(idx, draw.starts, draw.factors)]
    return bank, draw, np.stack(crops_np).astype(np.float64)


def _rotate_np(x: np.ndarray, theta: float) -> np.ndarray:
    return np.fft.irfft(np.fft.rfft(x) * np.exp(1j * theta), n=len(x))


def _reference_input(strategy: str, crops: np.ndarray, i: int, j: int, r: float, phi_i: float, phi_j: float,
                     gain: float | None) -> np.ndarray:
    """What enters the network for row i under an input-space mix, written from the references (gain last)."""
    if strategy == "bc":  # BC learning's dataset.get_example: U.mix of the two crops, then U.random_gain on the mix
        return bc_example(crops[i], crops[j], r, RATE, gain, n_fft=fft_size(RATE))
    if strategy == "mixup":
        out = r * crops[i] + (1 - r) * crops[j]
    else:  # intermix_vanilla: shifted inputs, r-weighting, eq. 5 (the root where the product is >= 0)
        a, b = r * _rotate_np(crops[i], phi_i), (1 - r) * _rotate_np(crops[j], phi_j)
        out = a + b + 2 * np.sqrt(np.maximum(a * b, 0.0)) * np.cos(phi_i - phi_j)
    return out if gain is None else gain * out


def test_train_inputs_hold_the_crops_before_gain_and_the_gains_apart(tiny_data):
    bank, draw, crops = _real_batch(tiny_data)
    got = train_inputs(bank, draw)
    np.testing.assert_allclose(got.crops.numpy(), crops, rtol=2e-6, atol=2e-7)
    assert torch.equal(got.gains, draw.gains)
    # train_batch still gains each crop (Standard learning's order: BC's dataset gains the one preprocessed sound)
    torch.testing.assert_close(train_batch(bank, draw), got.crops * draw.gains[:, None])


def _mixed(tiny_data, strategy: str):  # noqa: ANN001, ANN202
    """A real batch with fixed draws and the mixer's draw of `strategy` on it: (draw, crops as numpy, MixBatch)."""
    bank, draw, crops = _real_batch(tiny_data)
    inputs = train_inputs(bank, draw)
    mixer = Mixer(STRATEGIES[strategy], num_classes=10, sample_rate=RATE, seed=3)
    return draw, crops, mixer.draw(inputs.crops, bank.labels[draw.clips], inputs.gains)


@pytest.mark.parametrize("strategy", ["bc", "mixup", "intermix_vanilla"])
def test_gain_multiplies_the_mixed_waveform_of_an_input_space_mix(tiny_data, strategy):
    """On fixed draws: gain_i * mix(x_i, x_j), p from the levels of the crops before gain (BC's dataset.py)."""
    draw, crops, b = _mixed(tiny_data, strategy)
    assert b.layer == 0 and b.out_gains is not None
    got = b(b.inputs).numpy()  # what StagedModel.forward hands its first stage when the layer is 0
    gains = draw.gains.double().numpy()
    scale = np.abs(crops).max()
    gain_before = []
    for i, j in enumerate(b.partner.tolist()):
        r, th = float(b.r[i]), b.theta.double().numpy()
        want = _reference_input(strategy, crops, i, j, r, th[i], th[j], float(gains[i]))
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-5 * scale)
        # the other order (each crop gained before the mix) is a different input: the test tells them apart
        before = _reference_input(strategy, crops * gains[:, None], i, j, r, th[i], th[j], None)
        gain_before.append(np.abs(before - want).max() / np.abs(want).max())
    assert max(gain_before) > 0.05


@pytest.mark.parametrize("strategy", ["speechmix", "intermix", "intermix_official", "speechmix_official"])
def test_gain_multiplies_each_input_of_a_hidden_space_mix(tiny_data, strategy):
    """No mixed waveform exists: each (phase-shifted) input is gained before the network, and p sees its level."""
    draw, crops, b = _mixed(tiny_data, strategy)
    assert b.layer in STRATEGIES[strategy].layers and b.layer > 0 and b.out_gains is None
    th = b.theta.double().numpy()
    shifted = np.stack([_rotate_np(c, t) for c, t in zip(crops, th)]) if STRATEGIES[strategy].rotate_input_phase else crops
    want = shifted * draw.gains.double().numpy()[:, None]
    np.testing.assert_allclose(b.inputs.numpy(), want, rtol=0, atol=1e-5 * np.abs(crops).max())
    if b.levels is not None:
        torch.testing.assert_close(b.levels, a_weighted_level_db(b.inputs, RATE))


@pytest.mark.parametrize("strategy", ["standard", "bc", "intermix"])
def test_training_step_feeds_the_network_the_gained_input(tiny_data, strategy):
    """Through training_step: the first stage of a real model sees gain x (Standard), gain x mix (BC), gained inputs (InterMix)."""
    bank, draw, _ = _real_batch(tiny_data)
    inputs = train_inputs(bank, draw)
    y = bank.labels[draw.clips]
    torch.manual_seed(0)
    model = create_model("m18", 10)
    seen = []
    model.stages[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    training_step(model, opt, Mixer(STRATEGIES[strategy], 10, RATE, seed=5), inputs, y)
    twin = Mixer(STRATEGIES[strategy], 10, RATE, seed=5).draw(inputs.crops, y, inputs.gains)  # the same draws
    if twin is None:
        want = inputs.crops * inputs.gains[:, None]
    else:
        want = twin(twin.inputs) if twin.layer == 0 else twin.inputs
    torch.testing.assert_close(seen[0], want)
