"""Thin KFP components: each parses its inputs, calls one `intermix_core.run.steps` function, writes its outputs.

The functions are turned into components per image set (`component_set`), so that a compiled
pipeline names its images by their inputs or digest (components/image.py). The module attributes
`preprocess`, `train_fold`, `fgsm_attack`, `train_pack`, `fgsm_pack`, `aggregate` are the components with
the version-only images, for the local runner (`train_pack` / `fgsm_pack`: several folds of a cell as one
fold pack, intermix_core.method.packing; `lane_gate`: a run waiting for the run before it in its lane,
pipelines/gpu_budget.py).

Each component function imports what it uses inside its body: KFP lightweight components ship the
function's source to the container and run it there, so module-level imports of these files are
not part of the task (kfp.dsl.component, "lightweight Python components").
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from kfp import dsl

from components import aggregate as _aggregate
from components import attack as _attack
from components import lane as _lane
from components import preprocess as _preprocess
from components import train as _train
from components.image import IMAGE_CPU, IMAGE_GPU


class ComponentSet(NamedTuple):
    """The components built on one pair of images."""

    preprocess: Any
    train_fold: Any
    fgsm_attack: Any
    aggregate: Any
    train_pack: Any
    fgsm_pack: Any
    lane_gate: Any


@functools.cache
def component_set(cpu_image: str = IMAGE_CPU, gpu_image: str = IMAGE_GPU) -> ComponentSet:
    """The components on these images: preprocess and aggregate on the CPU image, train and FGSM on the CUDA one."""

    def make(func: Any, image: str) -> Any:
        return dsl.component(base_image=image, install_kfp_package=False)(func)

    return ComponentSet(
        preprocess=make(_preprocess.preprocess, cpu_image),
        train_fold=make(_train.train_fold, gpu_image),
        fgsm_attack=make(_attack.fgsm_attack, gpu_image),
        aggregate=make(_aggregate.aggregate, cpu_image),
        train_pack=make(_train.train_pack, gpu_image),
        fgsm_pack=make(_attack.fgsm_pack, gpu_image),
        lane_gate=make(_lane.lane_gate, cpu_image),
    )


preprocess, train_fold, fgsm_attack, aggregate, train_pack, fgsm_pack, lane_gate = component_set()

__all__ = ["ComponentSet", "aggregate", "component_set", "fgsm_attack", "fgsm_pack", "lane_gate", "preprocess",
           "train_fold", "train_pack"]
