"""FGSM robustness (eq. 7): x_adv = x + eps * sign(grad_x L(theta, x, y)) on the test crops.

Two errors per epsilon, both always reported, eps = 0 included (the clean error measured by the same
code): the 10-crop clip error (the mean softmax of a clip's 10 attacked crops, as the clean test
error is measured) and the single-crop error (every attacked crop judged alone). docs/results.md
says which one to hold against the paper's Table 3 and why.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from intermix_core.data import load_prepared
from intermix_core.method.bank import ClipBank, eval_batch
from intermix_core.method.checkpoint import check_same_data, load_checkpoint, model_from_checkpoint
from intermix_core.method.devices import resolve_device
from intermix_core.method.evaluate import clip_error, crop_error, default_eval_clips
from intermix_core.models import StagedModel, model_class, speed_up


def fgsm(
    model: StagedModel, x: torch.Tensor, y: torch.Tensor, epsilons: list[float] | tuple[float, ...], clip: bool = True
) -> list[torch.Tensor]:
    """Adversarial versions of crops x (N, T) with labels y (N,), one per epsilon.

    L is the cross-entropy of each crop's output with its clip's label; the gradient is taken once
    (its sign does not depend on epsilon). With `clip`, x_adv is clipped to [-1, 1].
    """
    return _fgsm(model, x, y, epsilons, clip)[0]


def _fgsm(
    model: StagedModel, x: torch.Tensor, y: torch.Tensor, epsilons: list[float] | tuple[float, ...], clip: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(adversarial crops per epsilon, the clean logits of the gradient pass)."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    step = grad.sign()
    out = []
    for eps in epsilons:
        adv = x.detach() + eps * step
        out.append(adv.clamp(-1.0, 1.0) if clip else adv)
    return out, logits.detach()


def with_zero(epsilons: list[float] | tuple[float, ...]) -> list[float]:
    """The epsilons to report: 0 (the clean reference) first, then the configured ones, without repeats."""
    return list(dict.fromkeys([0.0, *epsilons]))


def fgsm_errors(
    model: StagedModel, bank: ClipBank, n_crops: int, epsilons: list[float] | tuple[float, ...],
    clip: bool, batch_clips: int | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """(10-crop clip error, single-crop error) in % on adversarial crops, each keyed by str(epsilon), eps 0 first."""
    model = model.to(bank.device).eval()
    eps_all = with_zero(epsilons)
    batch_clips = batch_clips or default_eval_clips(bank.device)
    probs: dict[float, list[torch.Tensor]] = {e: [] for e in eps_all}
    for i in range(0, len(bank), batch_clips):
        clips = torch.arange(i, min(i + batch_clips, len(bank)), device=bank.device)
        crops = eval_batch(bank, clips, n_crops)
        y = bank.labels[clips].repeat_interleave(n_crops)
        attacked, clean = _fgsm(model, crops, y, eps_all[1:], clip)  # eps 0: the gradient pass's own logits
        probs[0.0].append(F.softmax(clean, dim=1).reshape(len(clips), n_crops, -1))
        for eps, adv in zip(eps_all[1:], attacked):
            with torch.no_grad():
                probs[eps].append(F.softmax(model(adv), dim=1).reshape(len(clips), n_crops, -1))
    clip_err, crop_err = {}, {}
    for eps in eps_all:
        p = torch.cat(probs[eps])
        clip_err[str(eps)] = clip_error(p, bank.labels)
        crop_err[str(eps)] = crop_error(p, bank.labels)
    return clip_err, crop_err


def attack_fold(
    checkpoint: str | Path | dict, data_dir: str | Path, fold: int | None = None, *, device: str | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """FGSM errors (clip, single-crop) of a trained fold on its test fold, with the checkpoint's settings.

    `checkpoint` is a path or an already loaded checkpoint (`checkpoint.load_checkpoint`), so a caller
    that needs the checkpoint's other fields loads it once.
    """
    dev = resolve_device(device)
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(state)
    # compile is not worth it for one pass per epsilon
    speed_up(model, channels_last=cfg.optim.channels_last, cudnn_benchmark=cfg.optim.cudnn_benchmark)
    where = "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    if fold is not None and fold != state["fold"]:
        raise ValueError(f"{where}: trained with fold {state['fold']} held out, so attacking fold {fold} would test it "
                         f"on its own training data; give fold {state['fold']} (or none)")
    fold = state["fold"]
    data = load_prepared(data_dir)
    if data.manifest.dataset != cfg.dataset or data.num_classes != cfg.num_classes:
        raise ValueError(f"{data_dir}: {data.manifest.dataset} ({data.num_classes} classes), but {where} was trained "
                         f"on {cfg.dataset} ({cfg.num_classes} classes); attack it on {cfg.dataset} data")
    rate = model_class(cfg.model).sample_rate
    if data.sample_rate != rate:
        raise ValueError(f"{data_dir}: prepared at {data.sample_rate} Hz, but {cfg.model} expects {rate} Hz")
    if fold not in data.folds:
        raise ValueError(f"fold {fold} is not in {data_dir}; folds there: {sorted(data.folds)}")
    check_same_data(state, data.manifest.data_fingerprint(), where, data_dir)
    bank = ClipBank.from_prepared(data, [fold], dev, length=cfg.crop_length)
    return fgsm_errors(model, bank, cfg.num_crops, cfg.attack.epsilons, cfg.attack.clip)
