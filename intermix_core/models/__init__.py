"""Model registry: `create_model(name, num_classes)`, `model_class(name)`; `list_models()` and `model_spec(name)`.

`list_models`, `model_spec` and `ModelSpec` (the models' fixed facts: sample rate, input lengths, mixing points)
need no torch and are imported with the package; the rest (`StagedModel`, `create_model`, `model_class`, ...)
load torch and the five model modules on first use (PEP 562), so that the configuration and the CLI's light
commands (`intermix show`, `config`, `estimate`) answer without importing torch (docs/architecture.md).
"""

from typing import Any

from intermix_core.models.specs import MODEL_SPECS, ModelSpec, list_models, model_spec

_HEAVY = ("Mix", "StagedModel", "at_least_float32", "create_model", "model_class", "register_model", "speed_up")

__all__ = ["MODEL_SPECS", "ModelSpec", "list_models", "model_spec", *_HEAVY]


def __getattr__(name: str) -> Any:
    """The torch-bound names, loaded on first use with every model registered."""
    if name not in _HEAVY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # imported here, not at the top: torch takes seconds to import (the documented exception, docs/architecture.md)
    from intermix_core.models import base, envnet, envnet_v2, m18, piczak_cnn, soundnet5  # noqa: F401  (registers)

    return getattr(base, name)
