"""FGSM (eq. 7): the loss rises along the step, the step's gradient against finite differences, cross-checked
against foolbox on the same inputs where it is installed, and run on a trained fold."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intermix_core.method.attack import attack_fold, fgsm
from intermix_core.method.train import train_fold
from intermix_core.models import create_model, model_class
from intermix_core.testing import real_signal

from tiny import FAST_MODEL, tiny_cfg


def _real_crops(n: int = 3, length: int = 4000) -> torch.Tensor:
    """n crops of a real demo clip (rain), float64."""
    x, _ = real_signal(seconds=1.0)
    return torch.from_numpy(np.stack([x[k * length : (k + 1) * length] for k in range(n)])).double()


def test_fgsm_step_is_the_sign_of_the_loss_gradient_and_the_loss_rises_along_it():
    """No foolbox needed: eq. 7 checked from its definition, on real audio, in float64 (M18 has no float32-only front end)."""
    torch.manual_seed(0)
    model = create_model("m18", 10).double().eval()
    x, y = _real_crops(), torch.tensor([2, 5, 7])
    (moved,) = fgsm(model, x, y, [1.0], clip=False)
    step = moved - x  # eps = 1: the step itself, sign(grad) in {-1, 0, 1}
    assert set(step.round().unique().tolist()) <= {-1.0, 0.0, 1.0} and (step.abs() > 0.5).float().mean() > 0.99
    step = step.round()

    def loss(z: torch.Tensor) -> torch.Tensor:  # L of eq. 7, per crop: cross-entropy with the crop's label
        with torch.no_grad():
            return F.cross_entropy(model(z), y, reduction="none")

    clean = loss(x)
    for eps in (1e-4, 1e-5):
        up, down = loss(x + eps * step), loss(x - eps * step)
        assert (up > clean).all() and (down < clean).all()
        # the sign of the gradient is the steepest sign step: any other sign vector raises the loss less
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            other = torch.randint(0, 2, x.shape, generator=g).double() * 2 - 1
            assert (loss(x + eps * other) - clean < up - clean).all()
    # finite differences of L at the samples the attack moves most: the sign it took is the gradient's sign
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    h = 1e-6
    for row in range(len(x)):
        for k in grad[row].abs().topk(6).indices.tolist() + [17, 1234, 3999]:
            e = torch.zeros_like(x)
            e[row, k] = h
            fd = float((loss(x + e)[row] - loss(x - e)[row]) / (2 * h))
            assert fd == pytest.approx(float(grad[row, k]), rel=1e-4, abs=1e-9)
            if abs(fd) > 1e-7:
                assert np.sign(fd) == float(step[row, k])


def test_fgsm_clips_to_the_recording_range_and_each_epsilon_is_a_scaled_step():
    torch.manual_seed(0)
    model = create_model("m18", 10).double().eval()
    x, y = _real_crops(2), torch.tensor([0, 9])
    unit, small, big = fgsm(model, x, y, [1.0, 1e-3, 0.5], clip=True)
    (raw,) = fgsm(model, x, y, [1.0], clip=False)
    step = (raw - x).round()
    torch.testing.assert_close(small, (x + 1e-3 * step).clamp(-1, 1))
    torch.testing.assert_close(big, (x + 0.5 * step).clamp(-1, 1))
    assert unit.abs().max() <= 1.0 and raw.abs().max() > 1.0


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


def test_an_attack_on_another_dataset_is_refused_in_a_line(tiny_data, tmp_path):
    """An ESC-10 checkpoint attacked on ESC-50 data at the right rate: an IndexError traceback, now one line."""
    from intermix_core.data import prepare_dataset
    from intermix_core.method.train import train_fold
    from intermix_core.testing import demo_subset

    train_fold(tiny_cfg("standard", epochs=1), tiny_data, 1, tmp_path / "f1", progress=False)
    src = demo_subset(tmp_path / "src", per_class_per_fold=1, folds=(1, 2), seconds=2.0)
    prepare_dataset(src, "esc50", tmp_path / "esc50", 22050, progress=False)
    with pytest.raises(ValueError, match=r"esc50: esc50 \(50 classes\), but .*checkpoint\.pt was trained on esc10 "
                                         r"\(10 classes\); attack it on esc10 data"):
        attack_fold(tmp_path / "f1" / "checkpoint.pt", tmp_path / "esc50", device="cpu")
