"""The device-resident data path against BC learning's reference preprocessing, clip by clip in numpy.

`intermix_core.method.bc_reference` transcribes the reference (and is value-tested here by hand); the batched
`intermix_core.method.bank` must return the same crops on the same draws, to float32 precision.
"""

import math

import numpy as np
import pytest
import torch

from intermix_core.config import AugmentConfig
from intermix_core.method.bank import ClipBank, CropDraw, PairSampler, draw_crops, eval_batch, train_batch
from intermix_core.method.bc_reference import crop_starts, eval_crops, random_scale, train_crop, train_example

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
