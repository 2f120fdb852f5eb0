"""Mixing inside every model: at every layer 0..M, forward and backward never produce NaN or Inf."""

import pytest
import torch

from intermix_core.config import STRATEGIES
from intermix_core.mixing import Mixer
from intermix_core.models import create_model, list_models, model_class
from intermix_core.train import kl_loss

VARIANTS = {
    "intermix": STRATEGIES["intermix"],
    "intermix_signed": STRATEGIES["intermix"].model_copy(update={"negative_product": "signed"}),
    "intermix_official": STRATEGIES["intermix_official"],
}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mixing_is_finite_at_every_layer(name, variant):
    torch.manual_seed(0)
    cls = model_class(name)
    model = create_model(name, 4).train()
    x = torch.randn(4, cls.input_length) * 0.05
    x[1] = 0.0  # digital silence: levels at the floor, ReLU zeros everywhere downstream
    y = torch.tensor([0, 1, 2, 3])
    for m in range(cls.max_mix_layer + 1):
        strategy = VARIANTS[variant].model_copy(update={"layers": (m,)})
        xin = x.clone().requires_grad_(True)
        batch = Mixer(strategy, 4, cls.sample_rate, seed=m).draw(xin, y)
        assert batch.layer == m
        model.zero_grad()
        logits = model(batch.inputs, mix=batch)
        loss = kl_loss(logits, batch.targets)
        loss.backward()
        assert torch.isfinite(logits).all(), f"{name} layer {m}: non-finite output"
        assert torch.isfinite(xin.grad).all(), f"{name} layer {m}: non-finite input gradient"
        for pname, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"{name} layer {m}: {pname} gradient"
