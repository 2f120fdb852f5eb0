"""Every registered model: shapes, finiteness, gradients, and mixing at every layer 0..M."""

from __future__ import annotations

import pytest
import torch

from intermix_core.models import create_model, list_models, model_class

NUM_CLASSES = 10
BATCH = 2  # the smallest batch BatchNorm accepts in train mode


class HalfRollMix:
    """Test mixer: average each example's tensor at `layer` with its neighbour's in the batch."""

    def __init__(self, layer: int) -> None:
        self.layer = layer

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """0.5 h + 0.5 h rolled by one along the batch."""
        return 0.5 * h + 0.5 * h.roll(1, 0)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """Keep the shared CPU usable for others."""
    torch.set_num_threads(1)


def waveforms(name: str, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """Random waveforms (B, T) in [-1, 1] at the model's true input length."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model_class(name).input_length, generator=gen) * 2 - 1


@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward_and_mix(name: str) -> None:
    """Output (B, classes), finite; every parameter gets a gradient; mixing at each layer changes the output."""
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES)
    assert model.max_mix_layer == len(model.stages) == model.num_stages >= 4

    x = waveforms(name)
    model.train()
    out = model(x)
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"

    model.eval()  # deterministic: no dropout, BatchNorm on running statistics
    with torch.no_grad():
        plain = model(x)
        # In eval mode an example's output must not depend on the rest of its batch.
        torch.testing.assert_close(model(x[:1]), plain[:1], rtol=1e-4, atol=1e-5)
        for m in range(model.max_mix_layer + 1):
            mixed = model(x, mix=HalfRollMix(m))
            assert mixed.shape == (BATCH, NUM_CLASSES)
            assert torch.isfinite(mixed).all(), f"{name}: non-finite output when mixing at layer {m}"
            assert not torch.allclose(mixed, plain), f"{name}: mixing at layer {m} changed nothing"


@pytest.mark.parametrize("name", list_models())
def test_model_silent_input_is_finite(name: str) -> None:
    """All-zero waveforms give finite outputs and finite input gradients (log of 0 in feature front ends)."""
    model = create_model(name, NUM_CLASSES).eval()
    x = torch.zeros(BATCH, model.input_length, requires_grad=True)
    out = model(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_unknown_model_lists_valid_names() -> None:
    """An unknown name raises ValueError naming every registered model."""
    with pytest.raises(ValueError) as err:
        create_model("resnet50", NUM_CLASSES)
    for name in list_models():
        assert name in str(err.value)


def test_registry_holds_the_paper_models() -> None:
    """The five models of the paper's Table 1 are registered."""
    assert set(list_models()) >= {"envnet", "envnet_v2", "m18", "piczak_cnn", "soundnet5"}


def _runs(model: torch.nn.Module, length: int) -> bool:
    """True if the model (train mode, batch of 2, mixing at its deepest layer) accepts waveforms of `length` samples."""
    x = torch.rand(BATCH, length) * 2 - 1
    try:
        with torch.no_grad():
            out = model.train()(x, mix=HalfRollMix(model.max_mix_layer))
    except RuntimeError:
        return False
    return out.shape == (BATCH, NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_input_length_range_is_exact(name: str) -> None:
    """min_input_length / max_input_length are the real edges: the model runs at each and fails one beyond."""
    from intermix_core.config import ConfigError, parse_config

    cls = model_class(name)
    model = create_model(name, NUM_CLASSES)
    lo, hi = cls.min_input_length, cls.max_input_length
    assert lo <= cls.input_length and (hi is None or cls.input_length <= hi)
    assert _runs(model, lo), f"{name} fails at its min_input_length {lo}"
    assert not _runs(model, lo - 1), f"{name} still runs at {lo - 1}: min_input_length is too high"
    if hi is None:
        assert _runs(model, 2 * cls.input_length), f"{name} has no max_input_length but fails at twice its length"
    else:
        assert _runs(model, hi), f"{name} fails at its max_input_length {hi}"
        assert not _runs(model, hi + 1), f"{name} still runs at {hi + 1}: max_input_length is too low"
    # the config accepts exactly that range, naming the field and the model otherwise
    assert parse_config({"model": name, "strategy": "standard", "input_length": lo}).crop_length == lo
    with pytest.raises(ConfigError, match=rf"config: input_length: {lo - 1} samples do not fit {name}: it accepts"):
        parse_config({"model": name, "strategy": "standard", "input_length": lo - 1})
