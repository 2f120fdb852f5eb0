"""Training: LR schedule, determinism, resume == uninterrupted, and real learning on ESC-10 clips."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from intermix_core.config import parse_config
from intermix_core.data import prepare_dataset
from intermix_core.models import model_class
from intermix_core.records import load_result
from intermix_core.train import learning_rate, eval_crops, train_crop, train_fold

ESC10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "esc10"
needs_esc10 = pytest.mark.skipif(not ESC10.is_dir(), reason=f"{ESC10} (real ESC-10 clips) not present")
FAST_MODEL = "piczak_cnn"


def esc10_subset(dst: Path, per_class_per_fold: int, folds: tuple[int, ...]) -> Path:
    """Copy a few real ESC-10 clips per class and fold into an ESC-50 layout under dst."""
    lines = (ESC10 / "meta" / "esc50.csv").read_text().splitlines()
    header, rows = lines[0], [ln.split(",") for ln in lines[1:]]
    keep, count = [], {}
    for row in sorted(rows):
        key = (int(row[1]), row[2])
        if int(row[1]) in folds and count.get(key, 0) < per_class_per_fold:
            count[key] = count.get(key, 0) + 1
            keep.append(row)
    (dst / "meta").mkdir(parents=True)
    (dst / "audio").mkdir()
    (dst / "meta" / "esc50.csv").write_text("\n".join([header] + [",".join(r) for r in keep]) + "\n")
    for r in keep:
        shutil.copy(ESC10 / "audio" / r[0], dst / "audio" / r[0])
    return dst


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    if not ESC10.is_dir():
        pytest.skip(f"{ESC10} not present")
    root = tmp_path_factory.mktemp("tiny")
    src = esc10_subset(root / "src", per_class_per_fold=1, folds=(1, 2))
    prepare_dataset(src, "esc10", root / "prepared", model_class(FAST_MODEL).sample_rate, progress=False)
    return root / "prepared"


def tiny_cfg(strategy: str = "intermix", **optim):
    return parse_config({
        "dataset": "esc10", "model": FAST_MODEL, "strategy": strategy, "seed": 7, "num_crops": 3,
        "optim": {"epochs": 3, "lr": 0.01, "batch_size": 4, "eval_every": 2, "checkpoint_every": 10, **optim},
    })


def test_learning_rate_schedule_by_hand():
    o = parse_config({"dataset": "esc50", "model": "envnet_v2", "strategy": "standard"}).resolved_optim()
    assert learning_rate(o, 1) == pytest.approx(0.01)  # warm-up: LR * 0.1
    assert learning_rate(o, 11) == pytest.approx(0.1)
    assert learning_rate(o, 300) == pytest.approx(0.1)
    assert learning_rate(o, 301) == pytest.approx(0.01)
    assert learning_rate(o, 601) == pytest.approx(0.001)
    assert learning_rate(o, 1000) == pytest.approx(0.0001)


def test_crops_follow_the_reference():
    sound = (np.arange(1000) % 7 * 1000).astype(np.int16)
    crops = eval_crops(sound, 400, 10)
    assert crops.shape == (10, 400)
    padded = np.pad(sound / 32768.0, (200, 200))
    stride = (1400 - 400) // 9
    np.testing.assert_allclose(crops[9], padded[9 * stride : 9 * stride + 400], rtol=1e-6)
    crop = train_crop(sound, 400, np.random.default_rng(0))
    assert crop.shape == (400,)


@needs_esc10
@pytest.mark.parametrize("strategy", ["standard", "intermix"])
def test_same_seed_same_result(tiny_data, tmp_path, strategy):
    cfg = tiny_cfg(strategy)
    a = train_fold(cfg, tiny_data, 1, tmp_path / "a", progress=False)
    b = train_fold(cfg, tiny_data, 1, tmp_path / "b", progress=False)
    assert a.history == b.history and a.test_error == b.test_error
    assert [h.val_error is not None for h in a.history] == [False, True, True]
    assert len(a.history) == 3 and a.confusion is not None and sum(map(sum, a.confusion)) == 10


@needs_esc10
def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    cfg = tiny_cfg("intermix", checkpoint_every=1)
    full = train_fold(cfg, tiny_data, 1, tmp_path / "full", progress=False)
    part = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False, stop_after_epoch=2)
    assert part.test_error is None and len(part.history) == 2
    resumed = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False)
    assert resumed.history == full.history and resumed.test_error == full.test_error
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished fold is not retrained
    again = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False)
    assert again == load_result(tmp_path / "resumed" / "result.json")


@needs_esc10
def test_checkpoint_of_another_config_is_refused(tiny_data, tmp_path):
    train_fold(tiny_cfg("bc", epochs=1), tiny_data, 1, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train_fold(tiny_cfg("intermix", epochs=1), tiny_data, 1, tmp_path / "x", progress=False)


@needs_esc10
@pytest.mark.slow
def test_real_training_beats_chance(tmp_path):
    """Folds 2-5 of ESC-10 (160 real clips) train, fold 1 (40 clips) tests: error clearly below chance (90%)."""
    src = esc10_subset(tmp_path / "src", per_class_per_fold=4, folds=(1, 2, 3, 4, 5))
    prepare_dataset(src, "esc10", tmp_path / "prep", model_class(FAST_MODEL).sample_rate, progress=False)
    cfg = parse_config({
        "dataset": "esc10", "model": FAST_MODEL, "strategy": "standard", "seed": 0,
        "optim": {"epochs": 10, "batch_size": 16, "eval_every": 5},
    })
    result = train_fold(cfg, tmp_path / "prep", 1, tmp_path / "out", progress=False)
    print("error by epoch:", [(h.epoch, h.train_loss, h.val_error) for h in result.history])
    assert result.test_error is not None and result.test_error < 60.0
