"""FGSM (eq. 7): cross-checked against foolbox on the same inputs, and run on a trained fold."""

import numpy as np
import pytest
import torch

from intermix_core.method.attack import attack_fold, fgsm
from intermix_core.method.train import train_fold
from intermix_core.models import create_model, model_class

from tiny import FAST_MODEL, tiny_cfg


@pytest.mark.parametrize("clip", [True, False])
def test_fgsm_matches_foolbox(clip):
    fb = pytest.importorskip("foolbox")
    torch.manual_seed(0)
    model = create_model(FAST_MODEL, 10).eval()
    x = (torch.rand(4, model_class(FAST_MODEL).input_length) * 2 - 1) * 0.99
    y = torch.tensor([0, 3, 5, 9])
    eps = [1e-2, 1e-3]
    ours = fgsm(model, x, y, eps, clip=clip)
    fmodel = fb.PyTorchModel(model, bounds=(-1.0, 1.0) if clip else (-10.0, 10.0))
    raw, _, _ = fb.attacks.FGSM()(fmodel, x, y, epsilons=eps)
    for a, b, e in zip(ours, raw, eps):
        agree = (a - b).abs() <= 1e-6
        assert agree.float().mean() > 0.999, f"eps={e}: {(~agree).sum()} samples differ"
        assert ((a - x).abs() <= e + 1e-7).all()
    if clip:
        assert all(a.abs().max() <= 1.0 for a in ours)


def test_fgsm_without_clipping_can_leave_the_range():
    model = create_model(FAST_MODEL, 10).eval()
    x = torch.full((2, model_class(FAST_MODEL).input_length), 0.999)
    (adv,) = fgsm(model, x, torch.tensor([1, 2]), [0.01], clip=False)
    assert adv.abs().max() > 1.0


def test_attack_fold_reports_clip_and_crop_errors_with_eps_zero_the_clean_error(tiny_data, tmp_path):
    cfg = tiny_cfg("bc", epochs=2).model_copy(
        update={"attack": tiny_cfg().attack.model_copy(update={"epsilons": (0.1, 0.001)})}
    )
    result = train_fold(cfg, tiny_data, 1, tmp_path, progress=False)
    clip_err, crop_err = attack_fold(tmp_path / "checkpoint.pt", tiny_data)
    assert list(clip_err) == list(crop_err) == ["0.0", "0.1", "0.001"]  # eps = 0 always reported first
    assert clip_err["0.0"] == pytest.approx(result.test_error)  # the clean 10-crop error, through the attack code
    for errors in (clip_err, crop_err):
        assert all(0.0 <= v <= 100.0 and np.isfinite(v) for v in errors.values())
    # single-crop errors are multiples of 100 / (10 clips x 3 crops), clip errors of 100 / 10
    assert all(abs(v * 30 / 100 - round(v * 30 / 100)) < 1e-6 for v in crop_err.values())
    assert all(abs(v / 10 - round(v / 10)) < 1e-6 for v in clip_err.values())


def test_an_attack_writes_only_under_its_own_fold_and_at_its_own_rate(tiny_data, tmp_path, capsys):
    """`attack --trained <fold 1> --fold 2 --store S` overwrote fold 2's stored result with fold 1's: now refused in a
    line before anything is written; a checkpoint attacked on data prepared at another rate is refused as train does."""
    from intermix_core.data import prepare_dataset
    from intermix_core.method.checkpoint import load_checkpoint
    from intermix_core.run.steps import train_step
    from intermix_core.testing import demo_subset
    from pipelines.cli import main

    cfg = tiny_cfg("standard", epochs=1).model_dump_json()
    store = tmp_path / "store"
    for fold in (1, 2):
        train_step(cfg, tiny_data, fold, tmp_path / f"f{fold}", "g", None, str(store))
    stored = store / "g/esc10/piczak_cnn/standard/fold2/result.json"
    before = stored.read_bytes()
    argv = ["attack", "--trained", str(tmp_path / "f1"), "--data", str(tiny_data), "--grid-id", "g", "--store", str(store)]
    assert main([*argv, "--fold", "2"]) == 2
    err = capsys.readouterr().err
    assert "f1/result.json: the result of fold 1, not fold 2; a fold's result is updated only under its own fold" in err
    assert stored.read_bytes() == before and len(err.strip().splitlines()) == 1
    assert main([*argv[:-4], "--grid-id", "other", "--fold", "1"]) == 2
    assert "a result of grid g, not of grid other" in capsys.readouterr().err

    with pytest.raises(ValueError, match="trained with fold 1 held out, so attacking fold 2 would test it on its own"):
        attack_fold(tmp_path / "f1" / "checkpoint.pt", tiny_data, 2, device="cpu")
    src = demo_subset(tmp_path / "src8k", per_class_per_fold=1, folds=(1,), seconds=2.0)
    prepare_dataset(src, "esc10", tmp_path / "p8k", 8000, progress=False)
    with pytest.raises(ValueError, match="p8k: prepared at 8000 Hz, but piczak_cnn expects 22050 Hz"):
        attack_fold(load_checkpoint(tmp_path / "f1" / "checkpoint.pt"), tmp_path / "p8k", device="cpu")
