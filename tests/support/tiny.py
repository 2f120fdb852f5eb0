"""A tiny, fast fold training on real clips: PiczakCNN on 10 + 10 demo clips, 3 epochs (the `tiny_data` fixture is in conftest)."""

from __future__ import annotations

from intermix_core.config import ExperimentConfig, parse_config

FAST_MODEL = "piczak_cnn"


def tiny_cfg(strategy: str = "intermix", augment: dict[str, object] | None = None, **optim: object) -> ExperimentConfig:
    """PiczakCNN on esc10, seed 7, 3 crops, 3 epochs of batches of 4 at its reference LR (optim fields and augmentation
    overridable)."""
    return parse_config({
        "dataset": "esc10", "model": FAST_MODEL, "strategy": strategy, "seed": 7, "num_crops": 3,
        "augment": augment or {},
        "optim": {"epochs": 3, "batch_size": 4, "eval_every": 2, "checkpoint_every": 10, **optim},
    })
