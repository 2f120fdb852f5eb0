"""What the rest of the system needs to know about each model without building it (no torch): its sample rate,
crop length, the input lengths it accepts, its mixing points, and its size (parameters, training activations) for
sizing fold packs to a GPU's memory (intermix_core.method.packing).

The model classes (`intermix_core.models.envnet` and siblings) take these attributes from here when they register
(`base.register_model`), so each number is written once; the configuration, grid files, `intermix show`,
`config` and `estimate` read them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One model's fixed facts: sample rate, its own input length T, the T range it runs at, its mixing points 0..M."""

    sample_rate: int
    input_length: int
    min_input_length: int
    max_input_length: int | None  # None: no upper bound
    max_mix_layer: int  # M, the number of stages: mixing is possible at layers 0..M
    params_millions: float  # trainable parameters (50 classes), millions
    activation_mib: float  # float32 outputs of its layers for one input of input_length in training (MiB)


# params_millions and activation_mib: tests/unit/method/test_models.py builds each model and checks them
MODEL_SPECS: dict[str, ModelSpec] = {
    # fc5's input size fixes the pooled width
    "envnet": ModelSpec(16000, 24014, 22575, 24014, 5, 48.56, 25.2),
    # the fc11 input size fixes the pooled width
    "envnet_v2": ModelSpec(44100, 66650, 60510, 66653, 7, 101.25, 38.2),
    # global average pooling: no upper bound
    "m18": ModelSpec(8000, 32000, 1022, None, 5, 3.70, 17.7),
    # 41 frames of 1024 samples at hop 512 (piczak_cnn.py); the fc input size fixes the number of frames
    "piczak_cnn": ModelSpec(22050, 21504, 19968, 24575, 4, 26.53, 0.3),
    # conv5's window needs 2.6 s
    "soundnet5": ModelSpec(22050, 88200, 56798, None, 4, 0.67, 19.6),
}


def list_models() -> list[str]:
    """Names of the models, sorted (those `create_model` builds)."""
    return sorted(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The fixed facts of model `name`; an unknown name is a ValueError listing the models."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(list_models())}")
    return MODEL_SPECS[name]
