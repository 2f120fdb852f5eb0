"""Every registered model, walked with the real Mixer: shapes, gradients, mixing at every layer 0..M, shape comments.

Mixing at each layer is the mixer the training uses (`intermix_core.mixing.Mixer`), with the paper's
InterMix, its signed-root variant and the authors'-code preset: forward and backward stay finite at
every layer, with a silent clip in the batch, and the mix changes the output. The shape comments in
the model files (`# (B, 32, 1, 33294)`) are checked against a forward pass on the meta device.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from intermix_core.config import STRATEGIES
from intermix_core.method.mixing import Mixer
from intermix_core.method.train import kl_loss
from intermix_core.models import create_model, list_models, model_class

NUM_CLASSES = 4
HEAVY = {"envnet", "envnet_v2"}  # full-length walks of these take most of a minute on 2 CPU cores
VARIANTS = {
    "intermix": STRATEGIES["intermix"],
    "intermix_signed": STRATEGIES["intermix"].model_copy(update={"negative_product": "signed"}),
    "intermix_official": STRATEGIES["intermix_official"],
}


def _models(heavy_marked: bool = True) -> list:
    """Registered model names, the heavy ones marked slow (the fast lane skips them)."""
    return [pytest.param(n, marks=pytest.mark.slow) if heavy_marked and n in HEAVY else n for n in list_models()]


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """Keep the shared CPU usable for others."""
    torch.set_num_threads(1)


def waveforms(name: str, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """Random waveforms (B, T) in [-1, 1] at the model's true input length, the second one silent."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, model_class(name).input_length, generator=gen) * 2 - 1) * 0.1
    x[1] = 0.0  # digital silence: levels at the floor, ReLU zeros everywhere downstream
    return x


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_batch_independence(name: str) -> None:
    """Output (B, classes), finite; every parameter gets a gradient; eval outputs do not depend on the batch."""
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES)
    assert model.max_mix_layer == len(model.stages) == model.num_stages >= 4
    x = waveforms(name, batch=2)
    out = model.train()(x)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", _models())
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_mixer_at_every_layer_is_finite_and_mixes(name: str, variant: str) -> None:
    torch.manual_seed(0)
    cls = model_class(name)
    model = create_model(name, NUM_CLASSES).train()
    x, y = waveforms(name), torch.tensor([0, 1, 2, 3])
    for m in range(cls.max_mix_layer + 1):
        strategy = VARIANTS[variant].model_copy(update={"layers": (m,)})
        xin = x.clone().requires_grad_(True)
        batch = Mixer(strategy, NUM_CLASSES, cls.sample_rate, seed=m).draw(xin, y)
        assert batch.layer == m
        model.zero_grad()
        logits = model(batch.inputs, mix=batch)
        kl_loss(logits, batch.targets).backward()
        assert torch.isfinite(logits).all(), f"{name} layer {m}: non-finite output"
        assert torch.isfinite(xin.grad).all(), f"{name} layer {m}: non-finite input gradient"
        for pname, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"{name} layer {m}: {pname} gradient"
        with torch.no_grad():  # in eval mode the mix is the only difference between the two passes
            model.eval()
            mixed, plain = model(batch.inputs, mix=batch), model(batch.inputs)
            model.train()
        assert not torch.allclose(mixed, plain), f"{name}: mixing at layer {m} changed nothing"


@pytest.mark.parametrize("name", list_models())
def test_silent_input_is_finite(name: str) -> None:
    """All-zero waveforms give finite outputs and finite input gradients (log of 0 in feature front ends)."""
    model = create_model(name, NUM_CLASSES).eval()
    x = torch.zeros(2, model.input_length, requires_grad=True)
    out = model(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


_SHAPE = re.compile(r"#.*?(\(B(?:, [\w ]+)*\))")


def _comment_shapes(name: str) -> list[tuple[str, ...]]:
    """Every `(B, ...)` shape written in the comments of the model class, in source order."""
    source = inspect.getsource(model_class(name))
    shapes = []
    for line in source.splitlines():
        if "#" in line:
            comment = line.split("#", 1)[1]
            shapes += [tuple(p.strip() for p in m[1:-1].split(",")) for m in re.findall(r"\(B(?:, [\w ]+)*\)", comment)]
    return shapes


@pytest.mark.parametrize("name", list_models())
def test_shape_comments_in_the_model_files_hold(name: str) -> None:
    """Each `# (B, ...)` comment matches, in order, the output of a module the forward pass runs."""
    b, model = 7, create_model(name, NUM_CLASSES)  # 7: no dimension of any model is 7
    device = "cpu" if name == "piczak_cnn" else "meta"  # torchaudio's stft has no meta kernel
    model = model.to(device).eval()
    seen: list[tuple[str, ...]] = []
    modules = [child for stage in model.stages for child in (stage if isinstance(stage, torch.nn.Sequential) else [stage])]
    modules += list(model.stages) + [model.head]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape))) for m in modules]
    with torch.no_grad():
        model(torch.zeros(b, model.input_length, device=device))
    for h in hooks:
        h.remove()
    comments = _comment_shapes(name)
    assert len(comments) >= model.num_stages, f"{name}: expected a shape comment per stage at least"
    actual = [tuple("B" if d == b else ("num_classes" if d == NUM_CLASSES and i == 1 and len(s) == 2 else str(d))
                    for i, d in enumerate(s)) for s in seen]
    pos = 0
    for shape in comments:
        while pos < len(actual) and actual[pos] != shape:
            pos += 1
        assert pos < len(actual), f"{name}: comment shape {shape} is not produced (in order) by the forward pass"
        pos += 1


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
    """True if the model (train mode, batch of 2, the real mixer at its deepest layer) accepts `length` samples."""
    x, y = torch.rand(2, length) * 2 - 1, torch.tensor([0, 1])
    strategy = VARIANTS["intermix"].model_copy(update={"layers": (model.max_mix_layer,)})
    try:
        with torch.no_grad():
            batch = Mixer(strategy, NUM_CLASSES, model.sample_rate, seed=0).draw(x, y)
            out = model.train()(batch.inputs, mix=batch)
    except RuntimeError:
        return False
    return out.shape == (2, NUM_CLASSES)


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


@pytest.mark.parametrize("name", ["envnet", "piczak_cnn"])
def test_channels_last_changes_neither_results_nor_checkpoints(name: str) -> None:
    """optim.channels_last: NHWC 2-D convolutions, the same logits and gradients to float tolerance, the same state dict."""
    from intermix_core.models import speed_up

    torch.manual_seed(0)
    plain = create_model(name, 10).eval()
    fast = speed_up(create_model(name, 10).eval(), channels_last=True)
    fast.load_state_dict(plain.state_dict())
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in fast.parameters())
    x = torch.randn(2, model_class(name).input_length) * 0.1
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_stages_give_the_same_logits_and_keep_the_state_dict_keys() -> None:
    """optim.compile: each stage compiled in place (torch.compile, inductor on CPU here); mixing stays eager."""
    from intermix_core.models import speed_up

    torch.manual_seed(0)
    plain = create_model("m18", 10).eval()
    fast = speed_up(create_model("m18", 10).eval(), compile_stages=True)
    fast.load_state_dict(plain.state_dict())
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 8000) * 0.1
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_the_cudnn_autotuner_switch_is_set_either_way_per_model() -> None:
    """optim.cudnn_benchmark: torch's process-wide switch, set by every speed_up call so one fold's choice does not
    carry over to the next in the same process (the switch itself does nothing on a CPU)."""
    from intermix_core.models import speed_up

    before = torch.backends.cudnn.benchmark
    try:
        speed_up(create_model("m18", 10), cudnn_benchmark=True)
        assert torch.backends.cudnn.benchmark is True
        speed_up(create_model("m18", 10))
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_each_model_class_carries_its_spec_and_the_specs_need_no_torch() -> None:
    """The classes take sample rate, lengths and mixing points from models/specs.py (written once, no torch needed)."""
    import subprocess
    import sys

    from intermix_core.models import MODEL_SPECS
    from intermix_core.models.piczak_cnn import HOP, N_FFT

    for name, spec in MODEL_SPECS.items():
        cls = model_class(name)
        assert (cls.sample_rate, cls.input_length, cls.min_input_length, cls.max_input_length, cls.max_mix_layer) == (
            spec.sample_rate, spec.input_length, spec.min_input_length, spec.max_input_length, spec.max_mix_layer)
        assert len(create_model(name, NUM_CLASSES).stages) == spec.max_mix_layer
    assert (MODEL_SPECS["piczak_cnn"].input_length - N_FFT) / HOP + 1 == 41  # exactly 41 frames, no padding
    code = ("import sys; from intermix_core.config.grid import load_grid, shards; "
            "print(shards(load_grid('paper'))[0].sample_rate, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split()[1] == "False"


@pytest.mark.parametrize("name", list_models())
def test_the_specs_size_of_each_model_is_the_built_models(name: str) -> None:
    """params_millions and activation_mib (what sizes fold packs to a GPU, intermix_core.method.packing) are the built
    model's own: its parameters (50 classes) and its layers' float32 outputs for one input in training, within 3 %."""
    from intermix_core.models.specs import model_spec

    spec = model_spec(name)
    model = create_model(name, 50).train()
    total = [0]

    def hook(module: torch.nn.Module, args: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * 4

    for m in model.modules():
        if not list(m.children()):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(2, spec.input_length) * 0.1)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(spec.params_millions, rel=0.03)
    assert total[0] / 2 / 2**20 == pytest.approx(spec.activation_mib, rel=0.03, abs=0.05)
