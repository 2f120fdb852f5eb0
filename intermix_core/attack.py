"""FGSM robustness (eq. 7): x_adv = x + eps * sign(grad_x L(theta, x, y)) on the 10 test crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from intermix_core.devices import resolve_device
from intermix_core.models import StagedModel
from intermix_core.train import error_rate, eval_crops, load_checkpoint, model_from_checkpoint


def fgsm(
    model: StagedModel, x: torch.Tensor, y: torch.Tensor, epsilons: list[float] | tuple[float, ...], clip: bool = True
) -> list[torch.Tensor]:
    """Adversarial versions of crops x (N, T) with labels y (N,), one per epsilon.

    L is the cross-entropy of each crop's output with its clip's label; the gradient is taken once
    (its sign does not depend on epsilon). With `clip`, x_adv is clipped to [-1, 1].
    """
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    step = grad.sign()
    out = []
    for eps in epsilons:
        adv = x.detach() + eps * step
        out.append(adv.clamp(-1.0, 1.0) if clip else adv)
    return out


def fgsm_error(
    model: StagedModel, clips: list[np.ndarray], labels: np.ndarray, length: int, n_crops: int,
    epsilons: list[float] | tuple[float, ...], clip: bool, device: torch.device, batch_clips: int = 8,
) -> dict[str, float]:
    """10-crop error (%) on adversarial crops for each epsilon, keyed by str(epsilon)."""
    model = model.to(device).eval()
    probs: dict[float, list[np.ndarray]] = {e: [] for e in epsilons}
    for i in range(0, len(clips), batch_clips):
        group = clips[i : i + batch_clips]
        crops = torch.from_numpy(np.concatenate([eval_crops(c, length, n_crops) for c in group])).to(device)
        y = torch.from_numpy(np.repeat(np.asarray(labels[i : i + batch_clips], dtype=np.int64), n_crops)).to(device)
        for eps, adv in zip(epsilons, fgsm(model, crops, y, epsilons, clip)):
            with torch.no_grad():
                p = F.softmax(model(adv), dim=1).reshape(len(group), n_crops, -1).mean(dim=1)
            probs[eps].append(p.cpu().numpy())
    return {str(e): error_rate(np.concatenate(probs[e]), np.asarray(labels)) for e in epsilons}


def attack_fold(
    checkpoint: str | Path, data_dir: str | Path, fold: int | None = None, *, device: str | None = None,
) -> dict[str, float]:
    """FGSM error per epsilon of a trained fold on its test fold, with the settings saved in the checkpoint."""
    from intermix_core.data import load_prepared

    state = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(state)
    fold = state["fold"] if fold is None else fold
    data = load_prepared(data_dir)
    dev = resolve_device(device)
    return fgsm_error(
        model, data.clips(fold), np.asarray(data.labels(fold)), cfg.crop_length, cfg.num_crops,
        cfg.attack.epsilons, cfg.attack.clip, dev,
    )
