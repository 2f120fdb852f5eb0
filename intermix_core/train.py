"""Train one fold: KL loss (eq. 6), Nesterov SGD, reference LR schedule, checkpoints, resume.

The fold's test clips are the held-out fold; every other fold trains. Crops, padding and the
10-crop test follow BC learning's reference preprocessing (REFERENCE.md). Seeded and
deterministic on CPU: a fold stopped and resumed from its checkpoint ends where an
uninterrupted run ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from intermix_core.config import ExperimentConfig, OptimConfig
from intermix_core.devices import resolve_device
from intermix_core.mixing import Mixer
from intermix_core.models import StagedModel, create_model, model_class
from intermix_core.records import CHECKPOINT, RESULT, EpochRecord, FoldResult, save_result


class FoldTracker(Protocol):
    """What training reports to (intermix_core.tracking.Tracker satisfies it)."""

    def start_fold(
        self, cfg: ExperimentConfig, fold: int, grid_id: str, tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> str: ...
    def log_epoch(self, run_id: str, record: EpochRecord) -> None: ...
    def finish_fold(self, run_id: str, result: FoldResult) -> None: ...


def learning_rate(optim: OptimConfig, epoch: int) -> float:
    """LR at 1-based `epoch`: LR * 0.1^(schedule points passed), LR * 0.1 during warm-up."""
    assert optim.lr is not None and optim.epochs is not None and optim.schedule is not None
    if epoch <= (optim.warmup or 0):
        return optim.lr * 0.1
    passed = sum(epoch > optim.epochs * s for s in optim.schedule)
    return optim.lr * 0.1**passed


def kl_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean over the batch of KL(target || softmax(logits))."""
    return F.kl_div(F.log_softmax(logits, dim=1), targets, reduction="batchmean")


def training_step(
    model: StagedModel, opt: torch.optim.Optimizer, mixer: Mixer, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SGD step on a batch (x: (B, T), y: (B,)) with the mixer's draw; returns (loss, logits, targets)."""
    batch = mixer.draw(x, y)
    if batch is None:
        logits, targets = model(x), mixer.targets(y).to(x.device)
    else:
        logits, targets = model(batch.input_transform(x), mix=batch), batch.targets
    loss = kl_loss(logits, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach(), targets


# --- data: crops and augmentation (numpy, per sample: this is data loading, not mixing) ---------


def random_scale(sound: np.ndarray, factor: float) -> np.ndarray:
    """Stretch to len * factor samples by linear interpolation (speed and pitch change together)."""
    n_out = max(int(len(sound) * factor), 1)
    ref = np.arange(n_out) / factor
    lo = np.minimum(ref.astype(np.int64), len(sound) - 1)
    hi = np.minimum(lo + 1, len(sound) - 1)
    frac = ref - lo
    return (1.0 - frac) * sound[lo] + frac * sound[hi]


def train_crop(sound: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Pad length/2 zeros each side, then a random crop of `length` samples."""
    pad = length // 2
    padded = np.pad(sound.astype(np.float32), (pad, pad))
    start = int(rng.integers(0, len(padded) - length + 1))
    return padded[start : start + length]


def eval_crops(sound: np.ndarray, length: int, n_crops: int) -> np.ndarray:
    """Pad length/2 each side, then `n_crops` evenly strided crops (n_crops, length), in [-1, 1]."""
    pad = length // 2
    padded = np.pad(sound.astype(np.float32) / 32768.0, (pad, pad))
    stride = (len(padded) - length) // max(n_crops - 1, 1)
    return np.stack([padded[i * stride : i * stride + length] for i in range(n_crops)])


def make_train_batch(
    clips: list[np.ndarray], cfg: ExperimentConfig, length: int, rng: np.random.Generator
) -> np.ndarray:
    """Crops (B, length) in [-1, 1] with optional scale (before padding) and gain augmentation."""
    out = np.empty((len(clips), length), dtype=np.float32)
    aug = cfg.augment
    for k, clip in enumerate(clips):
        s = clip.astype(np.float32)
        if aug.scale:
            s = random_scale(s, aug.scale_max ** rng.uniform(-1.0, 1.0))
        s = train_crop(s, length, rng) / 32768.0
        if aug.gain:
            s = s * 10.0 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20.0)
        out[k] = s
    return out


# --- evaluation -----------------------------------------------------------------------------------


@torch.no_grad()
def predict_clips(
    model: StagedModel, clips: list[np.ndarray], length: int, n_crops: int, device: torch.device,
    batch_clips: int = 8,
) -> np.ndarray:
    """Mean of the softmax over `n_crops` test crops for each clip: (N, C)."""
    model.eval()
    probs = []
    for i in range(0, len(clips), batch_clips):
        crops = np.concatenate([eval_crops(c, length, n_crops) for c in clips[i : i + batch_clips]])
        out = F.softmax(model(torch.from_numpy(crops).to(device)), dim=1)
        probs.append(out.reshape(-1, n_crops, out.shape[1]).mean(dim=1).cpu().numpy())
    return np.concatenate(probs)


def error_rate(probs: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of clips whose argmax differs from the label."""
    return float(100.0 * np.mean(probs.argmax(axis=1) != labels))


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, probs.argmax(axis=1)), 1)
    return cm.tolist()


# --- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a temporary file and rename: a checkpoint is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (on CPU), naming the file if it is not one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a readable intermix checkpoint ({err})") from None


def model_from_checkpoint(state: dict[str, Any]) -> tuple[StagedModel, ExperimentConfig]:
    """Rebuild the trained model (eval mode, CPU) and its resolved config from a checkpoint."""
    cfg = ExperimentConfig.model_validate(state["config"])
    model = create_model(cfg.model, cfg.num_classes)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def fold_seed(seed: int, fold: int) -> int:
    """A distinct, reproducible seed for each (seed, fold)."""
    return seed * 1000 + fold


def train_fold(
    cfg: ExperimentConfig,
    data_dir: str | Path,
    fold: int,
    out_dir: str | Path,
    *,
    tracker: FoldTracker | None = None,
    grid_id: str = "local",
    progress: bool = True,
    device: str | None = None,
    stop_after_epoch: int | None = None,
) -> FoldResult:
    """Train on every fold but `fold`, test on `fold`; checkpoint to `out_dir` and resume from it.

    `stop_after_epoch` ends the run early after that epoch's checkpoint (to test resumption);
    the returned result then has no test error.
    """
    from intermix_core.data import load_prepared

    dev = resolve_device(device)  # first: a GPU task without a usable GPU stops before any work
    cfg = cfg.resolved()
    optim = cfg.optim
    assert optim.epochs is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_prepared(data_dir)
    cls = model_class(cfg.model)
    if data.sample_rate != cls.sample_rate:
        raise ValueError(
            f"{data_dir}: prepared at {data.sample_rate} Hz, but {cfg.model} expects {cls.sample_rate} Hz"
        )
    if fold not in data.folds:
        raise ValueError(f"fold {fold} is not in {data_dir}; folds there: {sorted(data.folds)}")
    if data.num_classes != cfg.num_classes:
        raise ValueError(f"{data_dir}: {data.num_classes} classes, but {cfg.dataset} has {cfg.num_classes}")
    length = cfg.crop_length

    train_clips = [c for f in sorted(data.folds) if f != fold for c in data.clips(f)]
    train_labels = np.concatenate([data.labels(f) for f in sorted(data.folds) if f != fold])
    test_clips, test_labels = data.clips(fold), np.asarray(data.labels(fold))

    seed = fold_seed(cfg.seed, fold)
    torch.manual_seed(seed)
    model = create_model(cfg.model, cfg.num_classes).to(dev)
    opt = torch.optim.SGD(
        model.parameters(), lr=learning_rate(optim, 1), momentum=optim.momentum,
        weight_decay=optim.weight_decay, nesterov=optim.nesterov,
    )
    mixer = Mixer(cfg.strategy, cfg.num_classes, cls.sample_rate, seed)
    rng = np.random.default_rng(seed)
    history: list[EpochRecord] = []
    start_epoch, run_id, elapsed, seen = 1, None, 0.0, 0

    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state["config"] != cfg.model_dump(mode="json") or state["fold"] != fold:
            raise ValueError(f"{ckpt_path}: belongs to another configuration or fold; use a fresh out_dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        mixer.generator.set_state(state["mixer_rng"])
        rng.bit_generator.state = state["data_rng"]
        torch.set_rng_state(state["torch_rng"])
        history = [EpochRecord.model_validate(h) for h in state["history"]]
        start_epoch, run_id = state["epoch"] + 1, state.get("run_id")
        elapsed, seen = state.get("elapsed", 0.0), state.get("seen", 0)
        if state["epoch"] >= optim.epochs and (out / RESULT).exists():
            from intermix_core.records import load_result

            return load_result(out / RESULT)

    if tracker is not None:
        run_id = tracker.start_fold(cfg, fold, grid_id, resume_run_id=run_id)

    bs = optim.batch_size
    probs = None
    bar = tqdm(
        range(start_epoch, optim.epochs + 1), desc=f"{cfg.dataset}/{cfg.setup}/{cfg.strategy.name}/fold{fold}",
        disable=not progress, initial=start_epoch - 1, total=optim.epochs, unit="epoch",
    )
    for epoch in bar:
        t0 = time.perf_counter()
        lr = learning_rate(optim, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        order = rng.permutation(len(train_clips))
        loss_sum, wrong, n_seen = 0.0, 0, 0
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = torch.from_numpy(make_train_batch([train_clips[k] for k in idx], cfg, length, rng)).to(dev)
            y = torch.from_numpy(train_labels[idx].astype(np.int64)).to(dev)
            loss, logits, targets = training_step(model, opt, mixer, x, y)
            loss_sum += float(loss) * len(idx)
            wrong += int((logits.argmax(1) != targets.argmax(1)).sum())
            n_seen += len(idx)
        elapsed += time.perf_counter() - t0
        seen += n_seen
        record = EpochRecord(
            epoch=epoch, lr=lr, train_loss=loss_sum / max(n_seen, 1), train_error=100.0 * wrong / max(n_seen, 1)
        )
        last = epoch == optim.epochs
        probs = None
        if last or epoch % optim.eval_every == 0:
            probs = predict_clips(model, test_clips, length, cfg.num_crops, dev)
            record.val_error = error_rate(probs, test_labels)
        history.append(record)
        if tracker is not None and run_id is not None:
            tracker.log_epoch(run_id, record)
        bar.set_postfix(loss=f"{record.train_loss:.3f}", err=f"{record.train_error:.1f}",
                        val=f"{record.val_error:.1f}" if record.val_error is not None else "-")
        if last or epoch % optim.checkpoint_every == 0 or epoch == stop_after_epoch:
            save_checkpoint(ckpt_path, {
                "config": cfg.model_dump(mode="json"), "fold": fold, "epoch": epoch,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "mixer_rng": mixer.generator.get_state(), "data_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "history": [h.model_dump() for h in history],
                "run_id": run_id, "elapsed": elapsed, "seen": seen,
            })
        if epoch == stop_after_epoch and not last:
            bar.close()
            return _result(cfg, fold, history, None, None, elapsed, seen)

    if probs is None:  # resumed after the last epoch's checkpoint, before the result was written
        probs = predict_clips(model, test_clips, length, cfg.num_crops, dev)
    result = _result(
        cfg, fold, history, error_rate(probs, test_labels), confusion_matrix(probs, test_labels, cfg.num_classes),
        elapsed, seen,
    )
    save_result(result, out / RESULT)
    if tracker is not None and run_id is not None:
        tracker.finish_fold(run_id, result)
    return result


def _result(
    cfg: ExperimentConfig, fold: int, history: list[EpochRecord], test_error: float | None,
    confusion: list[list[int]] | None, elapsed: float, seen: int,
) -> FoldResult:
    """Assemble the FoldResult record for this fold."""
    return FoldResult(
        dataset=cfg.dataset, setup=cfg.setup_name, model=cfg.model, strategy=cfg.strategy.name, fold=fold,
        seed=cfg.seed, test_error=test_error, history=history, confusion=confusion,
        train_seconds=round(elapsed, 3), samples_per_second=round(seen / elapsed, 2) if elapsed > 0 else None,
        config=cfg.model_dump(mode="json"),
    )
