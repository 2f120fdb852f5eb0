"""Models as stage lists: mixing can happen on the waveform (layer 0) or after any stage m."""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from intermix_core.models.specs import list_models, model_spec


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 if it is a narrower float (bf16/fp16 under autocast), else unchanged (float64 stays float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Mix(Protocol):
    """What a model needs from a mixer: the layer to mix at, and how to mix a hidden tensor."""

    layer: int

    def __call__(self, h: torch.Tensor) -> torch.Tensor: ...


class StagedModel(nn.Module):
    """A classifier written as `stages` (mixing points after each) plus a `head`.

    `register_model` sets `sample_rate`, `input_length` and `max_mix_layer` (M, the number of stages) from the
    model's `specs.ModelSpec`; subclasses build `stages` / `head`. The input is a batch of waveforms shaped (B, T)
    in [-1, 1]; the output is logits (B, num_classes). A strategy's layer set L (config.StrategyConfig.layers) picks stages by index.
    `min_input_length` and `max_input_length` (None: no upper bound) are the T it runs at
    (tests/unit/method/test_models.py checks both edges).
    """

    sample_rate: int = 16000
    input_length: int = 24014
    min_input_length: int = 1  # every model sets its own range; the test of the edges fails on these defaults
    max_input_length: int | None = None
    max_mix_layer: int = 0

    def __init__(self, stages: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        if len(stages) != self.max_mix_layer:
            raise ValueError(f"{type(self).__name__}: {len(stages)} stages but max_mix_layer={self.max_mix_layer}")
        self.stages = nn.ModuleList(stages)
        self.head = head

    @property
    def num_stages(self) -> int:
        """M: mixing is possible at layers 0..M (0 is the waveform)."""
        return len(self.stages)

    def forward(self, x: torch.Tensor, mix: Mix | None = None) -> torch.Tensor:
        """Run the stages on waveforms (B, T), applying `mix` after stage `mix.layer`."""
        h = x
        if mix is not None and mix.layer == 0:
            h = mix(h)
        for m, stage in enumerate(self.stages, start=1):
            h = stage(h)
            if mix is not None and mix.layer == m:
                h = mix(h)
        return self.head(h)


_REGISTRY: dict[str, type[StagedModel]] = {}


def register_model(name: str) -> Callable[[type[StagedModel]], type[StagedModel]]:
    """Class decorator adding a `StagedModel` subclass (built as `cls(num_classes)`) to the registry."""

    def wrap(cls: type[StagedModel]) -> type[StagedModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        spec = model_spec(name)  # the facts are written once, in specs.py (read there without torch)
        cls.sample_rate, cls.input_length, cls.max_mix_layer = spec.sample_rate, spec.input_length, spec.max_mix_layer
        cls.min_input_length, cls.max_input_length = spec.min_input_length, spec.max_input_length
        _REGISTRY[name] = cls
        return cls

    return wrap


def model_class(name: str) -> type[StagedModel]:
    """The registered class for `name` (its sample_rate, input_length, max_mix_layer), unbuilt."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def speed_up(model: StagedModel, *, channels_last: bool = False, compile_stages: bool = False,
             cudnn_benchmark: bool = False) -> StagedModel:
    """Apply the GPU-speed options in place (state-dict keys unchanged): channels-last, compiled stages, cuDNN autotuner.

    `cudnn_benchmark` is torch's process-wide switch, set either way here so that an earlier fold's choice in the
    same process does not carry over.
    """
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D parameters only; 2-D convolutions then run NHWC
    if compile_stages:
        for module in (*model.stages, model.head):
            module.compile()  # in place: the mixing points between stages stay eager Python
    return model


def create_model(name: str, num_classes: int) -> StagedModel:
    """Build a registered model by name for `num_classes` classes."""
    cls = model_class(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return cls(num_classes)
