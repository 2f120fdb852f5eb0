"""Train one fold: KL loss (eq. 6), Nesterov updates, reference LR schedule, checkpoints, resume.

The fold's test clips are the held-out fold; every other fold trains. Crops, padding and the
10-crop test follow BC learning's reference preprocessing (`intermix_core.reference`), run batched
on the training device (`intermix_core.bank`): the clips live there as one int16 bank, loss and
errors accumulate there, and the host reads them once per epoch. Seeded and deterministic on CPU:
a fold stopped and resumed from its checkpoint ends where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from intermix_core.bank import ClipBank, PairSampler, draw_crops, epoch_order, eval_batch, train_batch
from intermix_core.config import ExperimentConfig
from intermix_core.devices import resolve_device
from intermix_core.mixing import Mixer
from intermix_core.models import StagedModel, create_model, model_class, speed_up
from intermix_core.optim import learning_rate, make_optimizer
from intermix_core.records import CHECKPOINT, RESULT, EpochRecord, FoldResult, fold_label, save_result

CHECKPOINT_FORMAT = 2
LOCK = ".fold.lock"


class FoldTracker(Protocol):
    """What training reports to (intermix_core.tracking.Tracker satisfies it)."""

    def start_fold(
        self, cfg: ExperimentConfig, fold: int, grid_id: str, tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> str: ...
    def ensure_current(self, run_id: str) -> None: ...
    def log_epoch(self, run_id: str, record: EpochRecord) -> None: ...
    def flush(self, run_id: str) -> object: ...
    def finish_fold(self, run_id: str, result: FoldResult) -> None: ...


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite; the message names the fold, epoch and learning rate."""


class FoldBusy(ValueError):
    """Another process is training into the same fold folder; the message says who."""


def kl_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean over the batch of KL(target || softmax(logits))."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), targets, reduction="batchmean")


def training_step(
    model: StagedModel, opt: torch.optim.Optimizer, mixer: Mixer, x: torch.Tensor, y: torch.Tensor,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One update on a batch (x: (B, T), y: (B,)) with the mixer's draw; returns (loss, logits, targets), all on device."""
    batch = mixer.draw(x, y)
    inputs, targets = (x, mixer.targets(y)) if batch is None else (batch.inputs, batch.targets)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(inputs, mix=batch)
    loss = kl_loss(logits, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach(), targets


# --- evaluation -----------------------------------------------------------------------------------


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
    return 100.0 * int((crop_probs.mean(dim=1).argmax(dim=1) != labels).sum()) / len(labels)


def crop_error(crop_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Single-crop error (%): every crop judged alone (wrong crops x 100 / crops)."""
    return 100.0 * int((crop_probs.argmax(dim=2) != labels.unsqueeze(1)).sum()) / crop_probs[..., 0].numel()


def confusion_matrix(crop_probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """10-crop confusion counts, rows = true class, columns = predicted class."""
    pred = crop_probs.mean(dim=1).argmax(dim=1)
    cm = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).tolist()


# --- checkpoints ----------------------------------------------------------------------------------


def _temporary(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and call (concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a private temporary file and rename: a checkpoint is whole or absent, never half-written.

    A failed write (a full disk, a quota) removes the temporary file and raises OSError naming the
    checkpoint and the system's reason; the previous checkpoint, if any, is left as it was.
    """
    tmp = _temporary(path)
    try:
        with tmp.open("wb") as f:  # a Python file: torch's writer then surfaces the OSError (errno) it hit
            torch.save(state, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        raise OSError(cause.errno, f"{path}: cannot save the checkpoint ({reason}; is the disk full?)") from None
    finally:
        tmp.unlink(missing_ok=True)


_REQUIRED = {"format": int, "config": dict, "fold": int, "epoch": int, "model": dict, "history": list}


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, as tensors and plain values only: it never runs code.

    `torch.load(weights_only=True)` refuses any pickled object other than tensors, containers and
    plain scalars, so a crafted file is refused instead of executed; missing or mistyped keys are
    refused too. Every refusal is a ValueError naming the file. `mmap` maps the tensors instead of
    reading them (to look at the epoch of a large checkpoint).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as err:  # noqa: BLE001 - unpickling refusals and damaged files alike
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a loadable intermix checkpoint, refused ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an intermix checkpoint (expected a mapping, got {type(state).__name__})")
    missing = [k for k in _REQUIRED if k not in state]
    wrong = [k for k, t in _REQUIRED.items() if k in state and not isinstance(state[k], t)]
    if missing or wrong:
        detail = [f"missing {', '.join(missing)}"] if missing else []
        detail += [f"wrong type for {', '.join(wrong)}"] if wrong else []
        raise ValueError(f"{path}: not an intermix checkpoint ({'; '.join(detail)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state['format']}, expected {CHECKPOINT_FORMAT}")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> tuple[StagedModel, ExperimentConfig]:
    """Rebuild the trained model (eval mode, CPU) and its resolved config from a checkpoint."""
    cfg = ExperimentConfig.model_validate(state["config"])
    model = create_model(cfg.model, cfg.num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit {cfg.model}: {str(err).splitlines()[0]}") from None
    return model.eval(), cfg


def fold_seed(seed: int, fold: int) -> int:
    """A distinct, reproducible seed for each (seed, fold)."""
    return seed * 1000 + fold


@contextlib.contextmanager
def fold_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on a fold folder while training into it; a second trainer gets FoldBusy naming the holder."""
    path = out / LOCK
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise FoldBusy(f"{out}: fold folder in use by {holder}; wait for it to finish or train into another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


# --- the fold -------------------------------------------------------------------------------------


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
    eval_clips: int | None = None,
    deadline: float | None = None,
) -> FoldResult:
    """Train on every fold but `fold`, test on `fold`; checkpoint to `out_dir` and resume from it.

    `stop_after_epoch` ends the run early after that epoch's checkpoint (to test resumption), and
    `deadline` (a `time.time()` value) after the first epoch that ends past it; the returned result
    then has no test error, and the resumable checkpoint lets a later call finish the fold. The final checkpoint keeps only what evaluation
    and FGSM need (weights, config, history), not the optimizer and generator states.
    """
    dev = resolve_device(device)  # first: a GPU task without a usable GPU stops before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with fold_lock(out):
        return _train_fold(cfg, data_dir, fold, out, tracker, grid_id, progress, dev, stop_after_epoch, eval_clips,
                           deadline)


def _open_fold(cfg: ExperimentConfig, data_dir: str | Path, fold: int, dev: torch.device) -> tuple[ClipBank, ClipBank]:
    """(training bank, test bank) of `fold` on `dev`, after checking the preparation fits the config."""
    from intermix_core.data import load_prepared

    data = load_prepared(data_dir)
    cls = model_class(cfg.model)
    if data.sample_rate != cls.sample_rate:
        raise ValueError(f"{data_dir}: prepared at {data.sample_rate} Hz, but {cfg.model} expects {cls.sample_rate} Hz")
    if fold not in data.folds:
        raise ValueError(f"fold {fold} is not in {data_dir}; folds there: {sorted(data.folds)}")
    if data.num_classes != cfg.num_classes:
        raise ValueError(f"{data_dir}: {data.num_classes} classes, but {cfg.dataset} has {cfg.num_classes}")
    train_folds = [f for f in sorted(data.folds) if f != fold]
    if not train_folds:
        raise ValueError(f"{data_dir}: fold {fold} is the only fold; nothing is left to train on")
    length, scale_max = cfg.crop_length, cfg.augment.scale_max
    return (ClipBank.from_prepared(data, train_folds, dev, length=length, scale_max=scale_max),
            ClipBank.from_prepared(data, [fold], dev, length=length))


def _train_fold(
    cfg: ExperimentConfig, data_dir: str | Path, fold: int, out: Path, tracker: FoldTracker | None, grid_id: str,
    progress: bool, dev: torch.device, stop_after_epoch: int | None, eval_clips: int | None,
    deadline: float | None,
) -> FoldResult:
    cfg = cfg.resolved()
    optim = cfg.optim
    assert optim.epochs is not None
    ckpt_path, result_path = out / CHECKPOINT, out / RESULT
    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None and (state["config"] != cfg.model_dump(mode="json") or state["fold"] != fold):
        raise ValueError(f"{ckpt_path}: belongs to another configuration or fold; use a fresh out_dir")
    if state is not None and state["epoch"] >= optim.epochs and result_path.exists():
        from intermix_core.records import load_result

        return load_result(result_path)

    train_bank, test_bank = _open_fold(cfg, data_dir, fold, dev)
    cls = model_class(cfg.model)
    seed = fold_seed(cfg.seed, fold)
    torch.manual_seed(seed)
    model = speed_up(create_model(cfg.model, cfg.num_classes).to(dev), channels_last=optim.channels_last,
                     compile_stages=optim.compile)
    opt = make_optimizer(model.parameters(), optim, learning_rate(optim, 1))
    mixer = Mixer(cfg.strategy, cfg.num_classes, cls.sample_rate, seed)
    data_gen = torch.Generator(device=dev).manual_seed(seed + 500)
    pairs = PairSampler(train_bank.labels, cfg.num_classes) if cfg.strategy.pairing == "adjacent_pairs" else None
    history: list[EpochRecord] = []
    start_epoch, run_id, elapsed, seen = 1, None, 0.0, 0

    if state is not None:
        model.load_state_dict(state["model"])
        history = [EpochRecord.model_validate(h) for h in state["history"]]
        start_epoch, run_id = state["epoch"] + 1, state.get("run_id")
        elapsed, seen = float(state.get("elapsed", 0.0)), int(state.get("seen", 0))
        if state["epoch"] < optim.epochs:
            _restore_training_state(state, opt, mixer, data_gen, dev, ckpt_path)

    if tracker is not None:
        run_id = tracker.start_fold(cfg, fold, grid_id, resume_run_id=run_id)

    def checkpoint(epoch: int, final: bool) -> None:
        ckpt: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "config": cfg.model_dump(mode="json"), "fold": fold, "epoch": epoch,
            "model": model.state_dict(), "history": [h.model_dump() for h in history],
            "run_id": run_id, "elapsed": elapsed, "seen": seen,
        }
        if not final:  # what resuming needs; a finished fold drops it (about half the file for SGD)
            ckpt.update(optimizer=opt.state_dict(), mixer_rng=mixer.state(), data_rng=data_gen.get_state(),
                        data_rng_device=dev.type, torch_rng=torch.get_rng_state())
            if dev.type == "cuda":
                ckpt["cuda_rng"] = torch.cuda.get_rng_state(dev)
        save_checkpoint(ckpt_path, ckpt)
        if tracker is not None and run_id is not None:
            tracker.flush(run_id)  # epoch metrics buffered during an MLflow outage go out with the checkpoint

    bs = optim.batch_size
    crop_probs = None
    desc = fold_label(cfg.dataset, cfg.setup_name, cfg.strategy.name, fold)
    bar = tqdm(range(start_epoch, optim.epochs + 1), desc=desc, disable=not progress, initial=start_epoch - 1,
               total=optim.epochs, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        lr = learning_rate(optim, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        if pairs is not None:  # the authors' protocol: N/2 pairs per epoch, bs pairs (2 bs rows) per step
            n_pairs = len(train_bank) // 2
            rows, step = pairs.draw(n_pairs, data_gen), 2 * bs
        else:
            rows, step = epoch_order(len(train_bank), data_gen, dev), bs
        loss_sum = torch.zeros((), device=dev)
        wrong = torch.zeros((), device=dev, dtype=torch.int64)
        n_seen = 0
        for i in range(0, len(rows), step):
            idx = rows[i : i + step]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = train_batch(train_bank, draw_crops(train_bank, idx, cfg.augment, data_gen))
            loss, logits, targets = training_step(model, opt, mixer, x, train_bank.labels[idx], optim.precision)
            loss_sum += loss * len(idx)
            wrong += (logits.argmax(1) != targets.argmax(1)).sum()
            n_seen += len(idx)
        train_loss = float(loss_sum) / max(n_seen, 1)  # the epoch's one host sync
        if not math.isfinite(train_loss):
            bar.close()
            raise TrainingDiverged(
                f"{desc}: the training loss became {train_loss} in epoch {epoch} (lr {lr:g}); "
                "the fold is failed (try a lower optim.lr)"
            )
        elapsed += time.perf_counter() - t0
        seen += n_seen
        record = EpochRecord(epoch=epoch, lr=lr, train_loss=train_loss, train_error=100.0 * int(wrong) / max(n_seen, 1))
        last = epoch == optim.epochs
        crop_probs = None
        if last or epoch % optim.eval_every == 0:
            crop_probs = predict_crops(model, test_bank, cfg.num_crops, eval_clips, optim.precision)
            record.val_error = clip_error(crop_probs, test_bank.labels)
        history.append(record)
        if tracker is not None and run_id is not None:
            tracker.ensure_current(run_id)  # FoldSuperseded if another attempt took the fold over: stop here
            tracker.log_epoch(run_id, record)
        bar.set_postfix(loss=f"{record.train_loss:.3f}", err=f"{record.train_error:.1f}",
                        val=f"{record.val_error:.1f}" if record.val_error is not None else "-")
        stop = epoch == stop_after_epoch or (deadline is not None and time.time() >= deadline)
        if last or epoch % optim.checkpoint_every == 0 or stop:
            checkpoint(epoch, final=last)
        if stop and not last:
            bar.close()
            return _result(cfg, fold, history, None, None, elapsed, seen)
    bar.close()

    if crop_probs is None:  # resumed after the last epoch's checkpoint, before the result was written
        crop_probs = predict_crops(model, test_bank, cfg.num_crops, eval_clips, optim.precision)
    result = _result(
        cfg, fold, history, clip_error(crop_probs, test_bank.labels),
        confusion_matrix(crop_probs, test_bank.labels, cfg.num_classes), elapsed, seen,
    )
    if tracker is not None and run_id is not None:
        tracker.finish_fold(run_id, result)  # before result.json: a fold is done only once tracking knows it
    save_result(result, result_path)
    return result


def _restore_training_state(
    state: dict[str, Any], opt: torch.optim.Optimizer, mixer: Mixer, data_gen: torch.Generator, dev: torch.device,
    path: Path,
) -> None:
    """Optimizer and generator states of a resumable checkpoint; refuses one that lacks them."""
    missing = [k for k in ("optimizer", "mixer_rng", "data_rng", "torch_rng") if k not in state]
    if missing:
        raise ValueError(f"{path}: cannot resume from epoch {state['epoch']}: missing {', '.join(missing)}")
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    same_device = state.get("data_rng_device") == dev.type and mixer.load_state(state["mixer_rng"], dev)
    if same_device:
        data_gen.set_state(state["data_rng"])
        if dev.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
    else:  # e.g. a CPU checkpoint resumed on a GPU: the weights carry over, the random draws restart
        import warnings

        warnings.warn(f"{path}: written on another device type; random draws restart from the seed", stacklevel=3)


def _result(
    cfg: ExperimentConfig, fold: int, history: list[EpochRecord], test_error: float | None,
    confusion: list[list[int]] | None, elapsed: float, seen: int,
) -> FoldResult:
    """Assemble the FoldResult record for this fold (with the best evaluated epoch, the authors' number)."""
    evaluated = [h for h in history if h.val_error is not None]
    best = min(evaluated, key=lambda h: (h.val_error, h.epoch)) if evaluated else None
    return FoldResult(
        dataset=cfg.dataset, setup=cfg.setup_name, model=cfg.model, strategy=cfg.strategy.name, fold=fold,
        seed=cfg.seed, test_error=test_error, history=history, confusion=confusion,
        best_val_error=best.val_error if best else None, best_epoch=best.epoch if best else None,
        train_seconds=round(elapsed, 3), samples_per_second=round(seen / elapsed, 2) if elapsed > 0 else None,
        config=cfg.model_dump(mode="json"),
    )
