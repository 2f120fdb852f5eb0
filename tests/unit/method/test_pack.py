"""Fold packs (intermix_core.method.pack): a pack of K folds is K separate trainings, numerically.

Float64 on a CPU: five steps of a pack against the same five steps of each fold alone (the
production `training_step`, the global generator for dropout), every model, Standard and InterMix,
dropout on; float32: one step's gradients. Inputs are real audio (the demo clips), batch 2.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from intermix_core.config import parse_config
from intermix_core.method.bank import TrainInputs
from intermix_core.method.mixing import Mixer
from intermix_core.method.optim import learning_rate, make_optimizer
from intermix_core.method.checkpoint import load_checkpoint, save_checkpoint
from intermix_core.method.pack import dropout_generator, make_pack_optimizer, pack_step, train_pack
from intermix_core.method.train import TrainingDiverged, fold_seed, train_fold, training_step
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result
from intermix_core.models import create_model, list_models, model_class
from intermix_core.testing import real_signal

from host_reads import HostReads
from tiny import tiny_cfg

K, BATCH, STEPS = 2, 2, 5
HEAVY = {"envnet", "envnet_v2"}  # float64 convolutions over their long inputs take minutes on 2 loaded CPU cores


def _models() -> list:
    """Registered model names, the heavy ones marked slow (the fast lane skips them; the full suite runs them)."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Models, draws and targets in `dtype` within the block."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _batches(model: str, steps: int, dtype: torch.dtype) -> list[list[tuple[TrainInputs, torch.Tensor]]]:
    """Per fold, per step: real-audio crops (B, T) with gains, and labels of two different classes."""
    length = model_class(model).input_length
    signal = torch.from_numpy(np.tile(real_signal(4.0)[0], 1 + length // 88200))
    gen = torch.Generator().manual_seed(11)
    out = []
    for _ in range(K):
        fold = []
        for _ in range(steps):
            starts = torch.randint(len(signal) - length, (BATCH,), generator=gen)
            crops = torch.stack([signal[s : s + length] for s in starts.tolist()]).to(dtype)
            gains = 10.0 ** ((torch.rand(BATCH, generator=gen) * 2 - 1) * 6 / 20)
            y = torch.randperm(10, generator=gen)[:BATCH]
            fold.append((TrainInputs(crops, gains.to(torch.float32)), y))
        out.append(fold)
    return out


def _folds(model: str, strategy: str, update_rule: str = "chainer"):  # noqa: ANN202
    """K folds set up as `train._set_up` sets one up: seeded model, optimizer, mixer, and the global generator after."""
    cfg = parse_config({"dataset": "esc10", "model": model, "strategy": strategy, "seed": 3,
                        "optim": {"update_rule": update_rule}}).resolved()
    folds = []
    for fold in range(1, K + 1):
        seed = fold_seed(cfg.seed, fold)
        torch.manual_seed(seed)
        net = create_model(model, cfg.num_classes)
        opt = make_optimizer(net.parameters(), cfg.optim, learning_rate(cfg.optim, 1))
        mixer = Mixer(cfg.strategy, cfg.num_classes, model_class(model).sample_rate, seed)
        folds.append((net, opt, mixer, torch.get_rng_state()))
    return cfg, folds


def _snapshot(net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Parameters, buffers and optimizer state tensors, by name."""
    out = {f"model.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    for i, p in enumerate(net.parameters()):
        for name, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                out[f"opt.{i}.{name}"] = v.clone()
    return out


def _separate_and_packed(model: str, strategy: str, steps: int, dtype: torch.dtype, update_rule: str = "chainer",
                         kernels: str = "auto"):  # noqa: ANN202
    """(per fold: losses and final state) trained alone, then the same as one pack."""
    with default_dtype(dtype):
        batches = _batches(model, steps, dtype)
        cfg, folds = _folds(model, strategy, update_rule)
        alone = []
        for (net, opt, mixer, rng), data in zip(folds, batches):
            net.train()
            torch.set_rng_state(rng)
            losses = [training_step(net, opt, mixer, x, y)[0] for x, y in data]
            alone.append((torch.stack(losses), _snapshot(net, opt)))
        cfg, folds = _folds(model, strategy, update_rule)
        nets, opts, mixers = [f[0] for f in folds], [f[1] for f in folds], [f[2] for f in folds]
        gens = []
        for f in folds:
            torch.set_rng_state(f[3])
            gens.append(dropout_generator(torch.device("cpu")))
        pack_opt = make_pack_optimizer(opts, cfg.optim, learning_rate(cfg.optim, 1))
        for net in nets:
            net.train()
        losses = []
        for s in range(steps):
            step_losses, _, _ = pack_step(nets, pack_opt, mixers, [b[s][0] for b in batches], [b[s][1] for b in batches],
                                          gens, kernels=kernels)
            losses.append(torch.stack(step_losses))
        packed = [(torch.stack(losses)[:, k], _snapshot(nets[k], opts[k])) for k in range(K)]
    return alone, packed


def _assert_same(alone, packed, tol: float) -> None:  # noqa: ANN001
    """Losses, parameters, BatchNorm buffers and optimizer state of each fold within `tol`."""
    for (loss_a, state_a), (loss_p, state_p) in zip(alone, packed):
        torch.testing.assert_close(loss_p, loss_a, rtol=0, atol=tol)
        assert state_a.keys() == state_p.keys() and any(k.startswith("opt.") for k in state_a)
        assert any("running_mean" in k for k in state_a) and any("num_batches_tracked" in k for k in state_a)
        for name in state_a:
            torch.testing.assert_close(state_p[name], state_a[name], rtol=0, atol=tol, msg=name)


@pytest.mark.parametrize("strategy", ["standard", "intermix"])
@pytest.mark.parametrize("model", _models())
def test_a_pack_in_float64_is_its_folds_trained_alone(model, strategy):
    """The CPU's kernels ('auto': a lone fold's convolution and dense calls, fold by fold): the same numbers.

    EnvNet-v2 runs it in float32, held to 0 (bitwise) instead of 1e-10: its float64 convolutions take CPUs' slow
    path, over ten minutes per case on 2 loaded cores; the fold-by-fold kernels are the lone fold's in any precision.
    """
    dtype, tol = (torch.float32, 0.0) if model == "envnet_v2" else (torch.float64, 1e-10)
    alone, packed = _separate_and_packed(model, strategy, STEPS, dtype)
    _assert_same(alone, packed, tol)


@pytest.mark.parametrize("model", [m for m in _models() if getattr(m, "values", [m])[0] != "envnet_v2"])
def test_grouped_kernels_in_float64_are_the_folds_trained_alone(model):
    """The GPU's kernels (one grouped convolution for all folds) over five InterMix steps, float64, within 1e-10 (on a
    CPU in fact bitwise). InterMix amplifies any rounding difference (its square root's slope near ReLU zeros): a
    1e-16 relative change of one weight of a fold trained alone moved M18 by 1e-6 in five steps, and a batched dense
    product (1e-17 per step) moved EnvNet by 2e-9: why dense layers run fold by fold. EnvNet-v2's grouped kernels are
    checked in float32 (below): in float64 a CPU takes minutes per step."""
    alone, packed = _separate_and_packed(model, "intermix", STEPS, torch.float64, kernels="grouped")
    _assert_same(alone, packed, 1e-10)


@pytest.mark.parametrize("update_rule", ["chainer", "pytorch"])
@pytest.mark.parametrize("model", _models())
def test_grouped_kernels_in_float32_give_each_fold_its_gradients(model, update_rule):
    """Float32, grouped kernels, Standard: one step's gradients of every fold within 1e-4 relative, and both update
    rules' one fused call over all folds' parameters equals each fold's own update. (InterMix is checked in float64
    above: in float32 its gradient is ill-conditioned at this level; a 1e-7 relative change of EnvNet's first weights
    moves a lone fold's gradient by 1.7e-3, more than the pack's grouped convolutions do, 7e-4.)"""
    with default_dtype(torch.float32):
        batches = _batches(model, 1, torch.float32)
        cfg, folds = _folds(model, "standard", update_rule)
        grads_alone, params_alone = [], []
        for (net, opt, mixer, rng), data in zip(folds, batches):
            net.train()
            torch.set_rng_state(rng)
            training_step(net, opt, mixer, *data[0])
            grads_alone.append([p.grad.clone() for p in net.parameters()])
            params_alone.append([p.detach().clone() for p in net.parameters()])  # after the update
        cfg, folds = _folds(model, "standard", update_rule)
        nets, opts = [f[0] for f in folds], [f[1] for f in folds]
        gens = []
        for f in folds:
            torch.set_rng_state(f[3])
            gens.append(dropout_generator(torch.device("cpu")))
        pack_opt = make_pack_optimizer(opts, cfg.optim, learning_rate(cfg.optim, 1))
        for net in nets:
            net.train()
        pack_step(nets, pack_opt, [f[2] for f in folds], [b[0][0] for b in batches], [b[0][1] for b in batches], gens,
                  kernels="grouped")
    for net, grads, params in zip(nets, grads_alone, params_alone):
        for p, g, after in zip(net.parameters(), grads, params):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4 * g.abs().max().item())
            torch.testing.assert_close(p.detach(), after, rtol=1e-4, atol=1e-4 * after.abs().max().item())


# --- the training loop of a pack: tiny real trainings (PiczakCNN, 10 + 10 clips, 3 epochs) -----------------


def _files(out) -> tuple[dict, dict]:  # noqa: ANN001
    """(checkpoint, result.json) of a fold folder."""
    return load_checkpoint(out / CHECKPOINT), json.loads((out / RESULT).read_text())


def test_a_pack_of_one_fold_writes_exactly_what_train_fold_writes(tiny_data, tmp_path):
    cfg = tiny_cfg("intermix", augment={"scale": True, "gain": True})
    alone = train_fold(cfg, tiny_data, 1, tmp_path / "alone", progress=False)
    packed = train_pack(cfg, tiny_data, [1], [tmp_path / "pack" / "fold1"], progress=False)[1]
    assert isinstance(packed, FoldResult) and packed.history == alone.history and packed.test_error == alone.test_error
    ckpt_a, result_a = _files(tmp_path / "alone")
    ckpt_p, result_p = _files(tmp_path / "pack" / "fold1")
    for key in ("train_seconds", "samples_per_second"):
        result_a.pop(key), result_p.pop(key)
    # each result names its own final checkpoint, whose bytes hold its wall time (elapsed): equal digests are not due
    from intermix_core.method.checkpoint import checkpoint_digest

    for out, result in ((tmp_path / "alone", result_a), (tmp_path / "pack" / "fold1", result_p)):
        assert result.pop("checkpoint_sha256") == checkpoint_digest(out / "checkpoint.pt")
    assert result_p == result_a
    assert ckpt_p.keys() == ckpt_a.keys() and ckpt_p["epoch"] == 3
    for name, value in ckpt_a["model"].items():
        assert torch.equal(ckpt_p["model"][name], value), name


def test_a_pack_trains_each_fold_in_its_own_folder_as_if_alone(tiny_data, tmp_path):
    cfg = tiny_cfg("intermix")
    outs = [tmp_path / "pack" / f"fold{f}" for f in (1, 2)]
    packed = train_pack(cfg, tiny_data, [1, 2], outs, progress=False)
    for fold, out in zip((1, 2), outs):
        alone = train_fold(cfg, tiny_data, fold, tmp_path / f"alone{fold}", progress=False)
        result = packed[fold]
        assert isinstance(result, FoldResult) and result.fold == fold and load_result(out / RESULT) == result
        assert [h.epoch for h in result.history] == [h.epoch for h in alone.history] == [1, 2, 3]
        # float32: grouped convolutions round differently from single ones; the trainings stay side by side
        for h_p, h_a in zip(result.history, alone.history):
            assert h_p.lr == h_a.lr and h_p.train_loss == pytest.approx(h_a.train_loss, rel=1e-3)
        assert load_checkpoint(out / CHECKPOINT)["fold"] == fold


def test_a_diverging_fold_fails_alone_and_the_others_finish(tiny_data, tmp_path):
    """Fold 2 resumes from a checkpoint whose weights hold an infinity (a damaged or exploded state): its loss is not
    finite in the next epoch; it ends FAILED (no result) while fold 1 finishes with its result."""
    cfg = tiny_cfg("standard")
    outs = [tmp_path / f"fold{f}" for f in (1, 2)]
    stopped = train_pack(cfg, tiny_data, [1, 2], outs, progress=False, stop_after_epoch=1)
    assert all(isinstance(r, FoldResult) and r.test_error is None for r in stopped.values())
    state = load_checkpoint(outs[1] / CHECKPOINT)
    state["model"]["head.bias"][0] = float("inf")
    save_checkpoint(outs[1] / CHECKPOINT, state)
    tracker = _Calls()
    outcome = train_pack(cfg, tiny_data, [1, 2], outs, progress=False, tracker=tracker)
    assert isinstance(outcome[2], TrainingDiverged) and "fold2" in str(outcome[2]) and "epoch 2" in str(outcome[2])
    assert not (outs[1] / RESULT).exists() and load_checkpoint(outs[1] / CHECKPOINT)["epoch"] == 1
    assert isinstance(outcome[1], FoldResult) and outcome[1].test_error is not None and (outs[0] / RESULT).exists()
    assert tracker.ended == [("run-2", "FAILED")] and tracker.finished == ["run-1"]


@pytest.mark.slow  # compiles the update on a CPU (tens of seconds)
def test_the_compiled_update_trains_a_pack_as_the_foreach_passes_also_when_a_fold_leaves_it(tiny_data, tmp_path,
                                                                                              monkeypatch):
    """The GPU's default (Chainer's update as one compiled kernel chain), here on a CPU: the same training as the
    foreach passes to float rounding, and a fold that diverges leaves the pack (a new layout: compiled anew)."""
    cfg = tiny_cfg("intermix")
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("INTERMIX_COMPILE", mode)
        outs = [tmp_path / mode / f"fold{f}" for f in (1, 2)]
        train_pack(cfg, tiny_data, [1, 2], outs, progress=False, stop_after_epoch=1)
        state = load_checkpoint(outs[1] / CHECKPOINT)
        state["model"]["head.bias"][0] = float("inf")
        save_checkpoint(outs[1] / CHECKPOINT, state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[mode] = train_pack(cfg, tiny_data, [1, 2], outs, progress=False)
        failed = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
        assert not failed, failed  # the update compiled (a failure would have run the foreach passes)
    for outcome in results.values():
        assert isinstance(outcome[2], TrainingDiverged) and isinstance(outcome[1], FoldResult)
    eager, compiled = results["0"][1], results["1"][1]
    assert len(eager.history) == len(compiled.history) == cfg.optim.epochs
    for a, b in zip(eager.history, compiled.history):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)


class _Calls:
    """A FoldTracker that records what training tells it (in place of MLflow, which this test does not need)."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.finished: list[str] = []

    def start_fold(self, cfg, fold, grid_id, tags=None, resume_run_id=None):  # noqa: ANN001, ANN201
        return f"run-{fold}"

    def ensure_current(self, run_id, force=False):  # noqa: ANN001, ANN201
        return None

    def log_epoch(self, run_id, record):  # noqa: ANN001, ANN201
        return None

    def flush(self, run_id):  # noqa: ANN001, ANN201
        return None

    def finish_fold(self, run_id, result):  # noqa: ANN001, ANN201
        self.finished.append(run_id)

    def end_fold(self, run_id, status, reason):  # noqa: ANN001, ANN201
        self.ended.append((run_id, status))


def test_kill_and_resume_of_a_pack_equals_an_uninterrupted_pack(tiny_data, tmp_path):
    cfg = tiny_cfg("intermix", augment={"scale": True, "gain": True})
    whole = train_pack(cfg, tiny_data, [1, 2], [tmp_path / "whole" / f"fold{f}" for f in (1, 2)], progress=False)
    outs = [tmp_path / "parts" / f"fold{f}" for f in (1, 2)]
    train_pack(cfg, tiny_data, [1, 2], outs, progress=False, stop_after_epoch=1)
    resumed = train_pack(cfg, tiny_data, [1, 2], outs, progress=False)
    for fold in (1, 2):
        a, b = whole[fold], resumed[fold]
        assert isinstance(a, FoldResult) and isinstance(b, FoldResult)
        assert [h.model_dump() for h in a.history] == [h.model_dump() for h in b.history]
        assert a.test_error == b.test_error
    # re-formed: fold 2 stopped in a pack, resumed alone (as `intermix rerun` would), goes on from its own state
    outs = [tmp_path / "reformed" / f"fold{f}" for f in (1, 2)]
    train_pack(cfg, tiny_data, [1, 2], outs, progress=False, stop_after_epoch=1)
    alone = train_fold(cfg, tiny_data, 2, outs[1], progress=False)
    reference = whole[2]
    assert isinstance(reference, FoldResult)
    assert alone.history[0] == reference.history[0]
    for h_a, h_r in zip(alone.history[1:], reference.history[1:]):
        assert h_a.train_loss == pytest.approx(h_r.train_loss, rel=1e-3)


@pytest.mark.parametrize("strategy", ["standard", "bc", "intermix", "intermix_official"])
def test_a_pack_epoch_reads_the_device_once(tiny_data, tmp_path, monkeypatch, strategy):
    """As a lone fold's epoch: no syncing operator in any step of any fold, one read (`to_host`) for all folds."""
    import intermix_core.method.pack as pack_module
    import intermix_core.method.train as train_module

    cfg = tiny_cfg(strategy, augment={"scale": True, "gain": True}).resolved()
    live = []
    for fold in (1, 2):
        run = train_module._set_up(cfg, tiny_data, fold, tmp_path / str(fold), torch.device("cpu"), None, None, None)
        run.dropout_gen = dropout_generator(torch.device("cpu"))
        live.append(run)
    pack_opt = make_pack_optimizer([run.opt for run in live], cfg.optim, 1.0)
    reads: list[object] = []
    real = pack_module.to_host

    def spy(values):  # noqa: ANN001, ANN202
        reads.append(values.shape)
        return real(values)

    monkeypatch.setattr(pack_module, "to_host", spy)
    with HostReads() as mode:
        records = pack_module._train_pack_epoch(live, pack_opt, 1)
    assert mode.seen == [] and reads == [(2, 2)] and [r.fold for r, _ in records] == [1, 2]


def test_a_pack_shares_one_bank_and_each_fold_crops_what_its_own_bank_gives(tiny_data, tmp_path):
    """The folds of a pack read one bank of every fold's clips (not K copies); a fold's training crops from it, with
    scale and gain, are bitwise those of its own bank, on the same draws."""
    import intermix_core.method.pack as pack_module
    import intermix_core.method.train as train_module
    from intermix_core.method.bank import draw_crops, train_inputs

    cfg = tiny_cfg("intermix", augment={"scale": True, "gain": True}).resolved()
    runs = [train_module._set_up(cfg, tiny_data, f, tmp_path / str(f), torch.device("cpu"), None, None, None)
            for f in (1, 2)]
    own = [run.train_bank for run in runs]
    pack_module._share_training_clips(runs, tiny_data, torch.device("cpu"))
    assert runs[0].train_bank is runs[1].train_bank and len(runs[0].train_bank) == len(own[0]) + len(own[1])
    for run, bank in zip(runs, own):
        assert run.train_index is not None and len(run.train_index) == len(bank)
        local = torch.arange(len(bank)).flip(0)
        gen_a = torch.Generator().manual_seed(5)
        gen_b = torch.Generator().manual_seed(5)
        a = train_inputs(bank, draw_crops(bank, local, cfg.augment, gen_a))
        b = train_inputs(run.train_bank, draw_crops(run.train_bank, run.train_index[local], cfg.augment, gen_b))
        assert torch.equal(a.crops, b.crops) and torch.equal(a.gains, b.gains)
        assert torch.equal(bank.labels[local], run.train_bank.labels[run.train_index[local]])


def test_folds_resumed_at_different_epochs_train_as_successive_packs(tiny_data, tmp_path):
    """A pack re-formed from folds at different epochs (fold 1 stopped after epoch 1 alone, fold 2 new): each start
    epoch is a pack of its own, here two packs of one, so each fold ends bitwise as trained alone without a stop."""
    cfg = tiny_cfg("intermix", augment={"scale": True, "gain": True})
    outs = [tmp_path / "pack" / f"fold{f}" for f in (1, 2)]
    train_fold(cfg, tiny_data, 1, outs[0], progress=False, stop_after_epoch=1)
    packed = train_pack(cfg, tiny_data, [1, 2], outs, progress=False)
    for fold in (1, 2):
        alone = train_fold(cfg, tiny_data, fold, tmp_path / f"alone{fold}", progress=False)
        result = packed[fold]
        assert isinstance(result, FoldResult) and result.history == alone.history
        assert result.test_error == alone.test_error
