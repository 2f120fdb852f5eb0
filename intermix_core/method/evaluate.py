"""The 10-crop evaluation of a test fold (BC learning's protocol), batched on the training device.

Every test clip gives `n_crops` evenly spaced crops (`bank.eval_batch`); a clip's prediction is the
argmax of its crops' mean softmax. The softmax of every crop stays on the device; errors are read
from it with one host transfer each (`to_host`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from intermix_core.method.bank import ClipBank, eval_batch
from intermix_core.models import StagedModel


def to_host(values: torch.Tensor) -> list | float | int:
    """`values` as Python numbers: the one place the training loop reads the device (one copy, one sync on a GPU)."""
    return values.detach().tolist()


def default_eval_clips(device: torch.device) -> int:
    """Clips per evaluation forward pass (x n_crops rows): small on CPU, larger on a GPU."""
    return 64 if device.type == "cuda" else 8


@torch.no_grad()
def predict_crops(
    model: StagedModel, bank: ClipBank, n_crops: int, batch_clips: int | None = None, precision: str = "fp32",
) -> torch.Tensor:
    """Softmax of every test crop of every clip in the bank: (N, n_crops, C), on the bank's device."""
    model.eval()
    batch_clips = batch_clips or default_eval_clips(bank.device)
    out = []
    for i in range(0, len(bank), batch_clips):
        clips = torch.arange(i, min(i + batch_clips, len(bank)), device=bank.device)
        with torch.autocast(bank.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(eval_batch(bank, clips, n_crops))
        out.append(F.softmax(logits.float(), dim=1).reshape(len(clips), n_crops, -1))
    return torch.cat(out)


def clip_error(crop_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """10-crop clip error (%): argmax of the mean softmax over a clip's crops (wrong clips x 100 / clips)."""
    return 100.0 * to_host((crop_probs.mean(dim=1).argmax(dim=1) != labels).sum()) / len(labels)


def crop_error(crop_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Single-crop error (%): every crop judged alone (wrong crops x 100 / crops)."""
    return 100.0 * int((crop_probs.argmax(dim=2) != labels.unsqueeze(1)).sum()) / crop_probs[..., 0].numel()


def confusion_matrix(crop_probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """10-crop confusion counts, rows = true class, columns = predicted class."""
    pred = crop_probs.mean(dim=1).argmax(dim=1)
    cm = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).tolist()
