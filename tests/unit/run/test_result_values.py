"""Fold results are checked on read, values and names: a crafted result.json never reaches a table.

Real results written as train_step leaves them into a folder store (the same Storage protocol as S3),
then crafted ones beside them; the aggregation reads them all back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from intermix_core.config import result_problem
from intermix_core.records import RESULT, save_result
from intermix_core.results.statistics import collect_results
from intermix_core.run.aggregate import aggregate_step
from intermix_core.store.layout import cell_prefix
from intermix_core.store.storage import open_storage

from fake_results import STD, fr

CRAFTED = {  # what each crafted result changes, and the words that refuse it
    "negative": ({"test_error": -50.0}, "test_error -50.0 is not a percentage (expected 0..100)"),
    "huge": ({"test_error": 1e308}, "test_error 1e+308 is not a percentage"),
    "fgsm": ({"fgsm": {"0.0": 20.0, "0.01": 250.0}}, "fgsm['0.01'] 250.0 is not a percentage"),
    "fold999": ({"fold": 999}, "fold 999 is not a fold of esc10 (1..5)"),
    "dataset": ({"dataset": "esc99"}, "unknown dataset 'esc99'; expected one of: esc10, esc50, urbansound8k"),
    "model": ({"model": "resnet50"}, "unknown model 'resnet50'"),
    "confusion": ({"confusion": [[1, 2], [3, 4]]}, "the confusion matrix is not 10 x 10 counts"),
}


def test_crafted_values_are_named() -> None:
    assert result_problem(fr("bc", 1, 20.0)) is None
    assert result_problem(fr("bc", 1, float("nan"))) is None  # the tables report it as a failed fold
    for change, words in CRAFTED.values():
        assert words in result_problem(fr("bc", 1, 20.0).model_copy(update=change))


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_result_in_the_store_is_left_out_and_named(case: str, tmp_path: Path) -> None:
    store = open_storage(tmp_path / "store")
    results = [fr("bc", f, e, grid_id="g") for f, e in enumerate(STD, start=1)]
    results[4] = results[4].model_copy(update={"fold": 4, "strategy": "standard"})  # a second cell: 1 fold of it
    for r in results:
        save_result(r, tmp_path / "r.json")
        store.upload_file(tmp_path / "r.json", f"{cell_prefix('g', r.dataset, r.setup, r.strategy, r.fold)}/{RESULT}")
    change, words = CRAFTED[case]
    crafted = fr("standard", 2, 20.0, grid_id="g").model_copy(update=change)
    save_result(crafted, tmp_path / "crafted.json")
    key = f"{cell_prefix('g', crafted.dataset, crafted.setup, crafted.strategy, crafted.fold)}/{RESULT}"
    store.upload_file(tmp_path / "crafted.json", key)
    summary = aggregate_step([], tmp_path / "out", grid_id="g", store_root=str(tmp_path / "store"))
    assert summary.cell("esc10", "envnet_v2", "standard").values == {4: STD[4]}  # the crafted fold is not there
    assert any(words in note and "left out" in note for note in summary.notes), summary.notes
    with pytest.raises(ValueError, match=r"crafted\.json: .*; not a fold result to publish"):
        collect_results(tmp_path / "crafted.json")
