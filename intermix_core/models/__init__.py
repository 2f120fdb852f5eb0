"""Model registry: `create_model(name, num_classes)` and `list_models()`."""

from intermix_core.models import envnet, envnet_v2, m18, piczak_cnn, soundnet5  # noqa: F401  (registers)
from intermix_core.models.base import (
    Mix,
    at_least_float32,
    StagedModel,
    create_model,
    list_models,
    model_class,
    register_model,
    speed_up,
)

__all__ = ["Mix", "at_least_float32", "StagedModel", "create_model", "list_models", "model_class", "register_model", "speed_up"]
