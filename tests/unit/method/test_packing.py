"""Fold packs sized to a GPU's memory (intermix_core.method.packing), and the loop items the pipelines pass."""

from __future__ import annotations

import pytest

from intermix_core.config import parse_config
from intermix_core.method.packing import (
    GIB, auto_pack, fold_bytes, pack_bytes, pack_item, parse_pack_item, split_folds,
)


def cfg(model: str, dataset: str = "esc50", **optim: object):
    return parse_config({"model": model, "dataset": dataset, "strategy": "intermix", "optim": optim})


@pytest.mark.parametrize(("model", "measured_gib"), [("envnet", 5.3), ("envnet_v2", 6.5)])
def test_one_fold_is_estimated_above_what_the_h200_measured(model: str, measured_gib: float) -> None:
    """bench_throughput.py on an H200 (2026-12-04, batch 32, fp32; intermix_core/run/throughput.json): one fold with its
    evaluation peaked at 5.3 GiB (EnvNet) and 6.5 GiB (EnvNet-v2): the estimate of a pack of one is above both."""
    assert pack_bytes(cfg(model), 1) / GIB > measured_gib


def test_an_80_gib_gpu_holds_every_fold_of_each_paper_cell_and_a_small_one_fewer() -> None:
    for model in ("envnet", "envnet_v2", "m18", "piczak_cnn", "soundnet5"):
        for dataset, folds in (("esc50", 5), ("urbansound8k", 10)):
            assert auto_pack(cfg(model, dataset), folds, 80) == folds, (model, dataset)
    big = cfg("envnet_v2", "urbansound8k")
    assert 1 < auto_pack(big, 10, 24) < 10  # an A10: a few folds
    assert auto_pack(big, 10, 16) == 1  # a T4 (16 GiB): one fold per task
    assert fold_bytes(cfg("envnet_v2", batch_size=64)) > fold_bytes(cfg("envnet_v2"))  # the batch's activations


def test_folds_split_into_the_fewest_even_packs_in_order() -> None:
    assert split_folds(range(1, 11), 4) == [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]]
    assert split_folds([1, 2, 3, 4, 5], 5) == [[1, 2, 3, 4, 5]]
    assert split_folds([1, 2, 3], 1) == [[1], [2], [3]]
    assert split_folds([2, 4, 7, 9], 3) == [[2, 4], [7, 9]]
    with pytest.raises(ValueError, match="pack size 0"):
        split_folds([1], 0)


def test_a_loop_item_is_its_folds_and_anything_else_is_named() -> None:
    assert parse_pack_item(pack_item([1, 2, 10])) == [1, 2, 10]
    for bad in ("", "1,2", "1 1", "0 1", "a"):
        with pytest.raises(ValueError, match="expected distinct fold numbers"):
            parse_pack_item(bad)
