"""Thin KFP components: each parses its inputs, calls one `intermix_core.steps` function, writes its outputs."""

from components.aggregate import aggregate
from components.attack import fgsm_attack
from components.preprocess import preprocess
from components.train import train_fold

__all__ = ["aggregate", "fgsm_attack", "preprocess", "train_fold"]
