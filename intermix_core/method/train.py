"""Train one fold: KL loss (eq. 6), Nesterov updates, reference LR schedule, checkpoints, resume.

The fold's test clips are the held-out fold; every other fold trains. Crops, padding and the
10-crop test follow BC learning's reference preprocessing (`intermix_core.method.bc_reference`), run
batched on the training device (`intermix_core.method.bank`): the clips live there as one int16
bank, loss and errors accumulate there, and the host reads them once per epoch. Seeded and
deterministic on CPU: a fold stopped and resumed from its checkpoint ends where an uninterrupted
run ends.

`train_fold` reads top to bottom: set up (or resume from the checkpoint), then per epoch train,
evaluate when due, report, checkpoint when due; then the final evaluation and the result.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from intermix_core.common.provenance import cpu_model, git_commit, machine
from intermix_core.config import ExperimentConfig
from intermix_core.data import load_prepared
from intermix_core.method.bank import (
    ClipBank,
    PairSampler,
    TrainInputs,
    apply_gain,
    draw_crops,
    epoch_order,
    train_inputs,
)
from intermix_core.method.checkpoint import (
    CHECKPOINT_FORMAT, check_same_data, checkpoint_digest, clean_temporaries, fold_lock, interruption, load_checkpoint,
    save_checkpoint,
)
from intermix_core.method.devices import choose_precision, resolve_device
from intermix_core.method.evaluate import clip_error, confusion_matrix, predict_crops, to_host
from intermix_core.method.mixing import Mixer
from intermix_core.method.optim import learning_rate, make_optimizer
from intermix_core.models import StagedModel, at_least_float32, create_model, model_class, speed_up
from intermix_core.records import CHECKPOINT, RESULT, EpochRecord, FoldResult, fold_label, load_result, save_result

# the clock of the checkpoint cadence (monotonic seconds); tests replace it to step time by hand
clock: Callable[[], float] = time.monotonic


class FoldTracker(Protocol):
    """What training reports to (intermix_core.tracking.Tracker satisfies it)."""

    def start_fold(
        self, cfg: ExperimentConfig, fold: int, grid_id: str, tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> str: ...
    def ensure_current(self, run_id: str, force: bool = False) -> None: ...
    def log_epoch(self, run_id: str, record: EpochRecord) -> None: ...
    def flush(self, run_id: str) -> object: ...
    def finish_fold(self, run_id: str, result: FoldResult) -> None: ...
    def end_fold(self, run_id: str, status: str, reason: str) -> None: ...


class FoldTakenOver(RuntimeError):
    """Another attempt at the fold took it over (a FoldTracker raises it, e.g. tracking.FoldSuperseded): this stops."""


class FoldInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the fold after an epoch, with a resumable checkpoint; the message says so."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite; the message names the fold, epoch and learning rate."""


def kl_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean over the batch of KL(target || softmax(logits))."""
    logp = F.log_softmax(at_least_float32(logits), dim=1)
    return F.kl_div(logp, targets.to(logp.dtype), reduction="batchmean")


def training_step(
    model: StagedModel, opt: torch.optim.Optimizer, mixer: Mixer, x: torch.Tensor | TrainInputs, y: torch.Tensor,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One update on a batch (x: (B, T) waveforms, or crops and their gains; y: (B,)); returns (loss, logits, targets).

    Gains go on what enters the network: the mixed waveform of an input-space mix, else each input.
    """
    crops, gains = (x.crops, x.gains) if isinstance(x, TrainInputs) else (x, None)
    batch = mixer.draw(crops, y, gains)
    inputs, targets = (apply_gain(crops, gains), mixer.targets(y)) if batch is None else (batch.inputs, batch.targets)
    with torch.autocast(crops.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(inputs, mix=batch)
    loss = kl_loss(logits, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach(), targets

def fold_seed(seed: int, fold: int) -> int:
    """A distinct, reproducible seed for each (seed, fold)."""
    return seed * 1000 + fold


# --- the fold -------------------------------------------------------------------------------------


@dataclass
class FoldRun:
    """One fold training in progress: what it trains, with what, and how far it got."""

    cfg: ExperimentConfig  # resolved: every reference default explicit
    fold: int
    out: Path
    dev: torch.device
    train_bank: ClipBank
    test_bank: ClipBank
    model: StagedModel
    opt: torch.optim.Optimizer
    mixer: Mixer
    data_gen: torch.Generator
    pairs: PairSampler | None  # the authors' adjacent pairs, or None for in-batch partners
    classes: list[str | None] | None = None  # class names by label (the prepared data's manifest)
    tracker: FoldTracker | None = None
    eval_clips: int | None = None
    grid_id: str = "local"
    data_fingerprint: str | None = None  # the prepared data's (Manifest.data_fingerprint), in checkpoint and result
    history: list[EpochRecord] = field(default_factory=list)
    start_epoch: int = 1
    run_id: str | None = None
    elapsed: float = 0.0  # seconds spent in training epochs (evaluation and checkpoints excluded)
    seen: int = 0  # training samples seen
    last_checkpoint: float = 0.0  # clock() when the last checkpoint was written (or training began)
    stop: StopRequest = field(default_factory=lambda: StopRequest())  # a signal asking to stop after this epoch
    precision: str = "fp32"  # optim.precision as it runs here: `auto` chosen for the device (choose_precision)
    # a fold of a pack draws its dropout masks from its own generator (intermix_core.method.pack); alone, None:
    # the global generator of the device
    dropout_gen: torch.Generator | None = None
    # a fold of a pack: its training clips' indices in `train_bank`, one bank the pack shares; alone, None (all of it)
    train_index: torch.Tensor | None = None

    @property
    def label(self) -> str:
        """'esc10/envnet_v2/intermix/fold3'."""
        return fold_label(self.cfg.dataset, self.cfg.setup_name, self.cfg.strategy.name, self.fold)


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
    then has no test error, and the resumable checkpoint lets a later call finish the fold. The
    final checkpoint keeps only what evaluation and FGSM need (weights, config, history), not the
    optimizer and generator states.
    """
    dev = resolve_device(device)  # first: a GPU task without a usable GPU stops before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with fold_lock(out):
        clean_temporaries(out)  # what a process killed while writing left (nobody else writes here: the lock)
        cfg = cfg.resolved()
        state = _checkpoint_of(cfg, fold, out)
        data_fingerprint = load_prepared(data_dir, verify=False).manifest.data_fingerprint()  # cheap: the manifest
        check_same_data(state, data_fingerprint, out / CHECKPOINT, data_dir)
        if state is not None and state["epoch"] >= cfg.optim.epochs and (out / RESULT).exists():
            return load_result(out / RESULT)  # finished earlier
        run = _set_up(cfg, data_dir, fold, out, dev, state, tracker, eval_clips)
        run.grid_id, run.data_fingerprint = grid_id, data_fingerprint
        # the handlers cover the whole fold, from the first MLflow call to the result (a pod's SIGTERM comes any time)
        with stop_on_signals() as run.stop:
            _stop_if_asked(run)  # signalled before the fold's run exists: nothing to end in MLflow
            if tracker is not None:
                run.run_id = tracker.start_fold(cfg, fold, grid_id, resume_run_id=run.run_id)
            try:
                _stop_if_asked(run)
                run.stop.when = "after this epoch, with a checkpoint"
                ended = _train(run, progress, stop_after_epoch, deadline)
            except FoldTakenOver:
                raise  # the fold's run belongs to the attempt that took it over
            except BaseException as err:  # a failure, a signal, a second Ctrl-C: the run ends saying which
                _end_run(run, err)
                raise
            run.stop.when = "once the fold's result is written and stored (its training is over)"
            return ended if isinstance(ended, FoldResult) else _finish(run, ended)


def _stop_if_asked(run: FoldRun) -> None:
    """FoldInterrupted if a signal came before the first epoch of this attempt (the checkpoint, if any, is kept)."""
    if run.stop.signum is not None:
        again = "resumes it from its checkpoint" if run.start_epoch > 1 else "starts it"
        raise FoldInterrupted(run.stop.signum, f"{run.label}: stopped by {signal.Signals(run.stop.signum).name} before "
                              f"epoch {run.start_epoch}: the same command {again}")


class StopRequest:
    """The first SIGINT or SIGTERM a training receives: it stops after the epoch in progress, with a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.when = "before training starts"  # what stopping means at this point of the fold (the message says it)

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            signal.signal(signum, self.previous[signum])  # a second one acts at once (Ctrl-C: KeyboardInterrupt)
            tqdm.write(f"intermix: {signal.Signals(signum).name}: stopping {self.when}"
                       + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""), file=sys.stderr)

    previous: dict[int, Any] = {}


_ACTIVE: list[StopRequest] = []  # the StopRequest whose handlers are installed (a nested block shares it)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM ask the training to stop after its current epoch (main thread only).

    Re-entrant: inside another such block (the train step covers the store sync around the fold)
    it yields the same request, so a signal anywhere in the fold is seen once, by every level.
    """
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    stop = StopRequest()
    stop.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in stop.previous:
        signal.signal(sig, stop)
    _ACTIVE.append(stop)
    try:
        yield stop
    finally:
        _ACTIVE.remove(stop)
        for sig, handler in stop.previous.items():
            signal.signal(sig, handler)


def _end_run(run: FoldRun, err: BaseException) -> None:
    """Tell tracking that the fold's run ended without finishing: KILLED (a signal, Ctrl-C) or FAILED (an error)."""
    if run.tracker is None or run.run_id is None:
        return
    killed = interruption(err) is not None  # a signal, also one a library reported as its own error
    reason = str(err) if isinstance(err, FoldInterrupted) else "interrupted" if killed else f"{type(err).__name__}: {err}"
    try:
        run.tracker.end_fold(run.run_id, "KILLED" if killed else "FAILED", reason)
    except Exception as tracking_err:  # noqa: BLE001 - the fold's own error is what the user must see
        print(f"intermix: warning: MLflow run {run.run_id} could not be ended ({type(tracking_err).__name__}: "
              f"{str(tracking_err).splitlines()[0] if str(tracking_err) else ''})", file=sys.stderr)


def _checkpoint_of(cfg: ExperimentConfig, fold: int, out: Path) -> dict[str, Any] | None:
    """The fold folder's checkpoint, if any; refused if it belongs to another configuration or fold."""
    path = out / CHECKPOINT
    state = load_checkpoint(path) if path.exists() else None
    if state is not None and (not cfg.resumes(state["config"]) or state["fold"] != fold):
        raise ValueError(f"{path}: belongs to another configuration or fold; use a fresh out_dir")
    return state


def _open_fold(cfg: ExperimentConfig, data_dir: str | Path, fold: int, dev: torch.device
               ) -> tuple[ClipBank, ClipBank, list[str | None]]:
    """(training bank, test bank, class names) of `fold` on `dev`, after checking the preparation fits the config."""
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
    # the bank reserves a window of T * scale_max per crop: only as wide as scale augmentation reads
    length, scale_max = cfg.crop_length, cfg.augment.scale_max if cfg.augment.scale else 1.0
    return (ClipBank.from_prepared(data, train_folds, dev, length=length, scale_max=scale_max),
            ClipBank.from_prepared(data, [fold], dev, length=length), data.manifest.classes)


def _set_up(
    cfg: ExperimentConfig, data_dir: str | Path, fold: int, out: Path, dev: torch.device, state: dict[str, Any] | None,
    tracker: FoldTracker | None, eval_clips: int | None,
) -> FoldRun:
    """Banks, model, optimizer and generators seeded for the fold, then the checkpoint's state on top (resume)."""
    optim = cfg.optim
    train_bank, test_bank, classes = _open_fold(cfg, data_dir, fold, dev)
    seed = fold_seed(cfg.seed, fold)
    torch.manual_seed(seed)
    model = speed_up(create_model(cfg.model, cfg.num_classes).to(dev), channels_last=optim.channels_last,
                     compile_stages=optim.compile, cudnn_benchmark=optim.cudnn_benchmark)
    run = FoldRun(
        cfg=cfg, fold=fold, out=out, dev=dev, train_bank=train_bank, test_bank=test_bank, model=model,
        opt=make_optimizer(model.parameters(), optim, learning_rate(optim, 1)),
        mixer=Mixer(cfg.strategy, cfg.num_classes, model_class(cfg.model).sample_rate, seed),
        data_gen=torch.Generator(device=dev).manual_seed(seed + 500),
        pairs=PairSampler(train_bank.labels, cfg.num_classes) if cfg.strategy.pairing == "adjacent_pairs" else None,
        classes=classes, tracker=tracker, eval_clips=eval_clips,
    )
    run.precision, why = choose_precision(optim.precision, dev)
    if optim.precision == "auto":
        print(f"intermix: {run.label}: {why}", file=sys.stderr)
    if state is not None:
        model.load_state_dict(state["model"])
        run.history = [EpochRecord.model_validate(h) for h in state["history"]]
        run.start_epoch, run.run_id = state["epoch"] + 1, state.get("run_id")
        run.elapsed, run.seen = float(state.get("elapsed", 0.0)), int(state.get("seen", 0))
        if state["epoch"] < optim.epochs:
            _restore_training_state(state, run.opt, run.mixer, run.data_gen, dev, out / CHECKPOINT)
    return run


def _train(run: FoldRun, progress: bool, stop_after_epoch: int | None,
           deadline: float | None) -> FoldResult | torch.Tensor | None:
    """The epoch loop from `run.start_epoch`: the last evaluation's crop softmax (None if resumed past the last
    epoch), or the fold's result without a test error if stopped early; FoldInterrupted after a signal's checkpoint.

    Besides training, an epoch costs a few microseconds of bookkeeping: its record is buffered for
    tracking (sent in the background), the progress bar redraws at most ten times a second, and
    checkpoints are written by wall time (`optim.checkpoint_every_s`) unless an epoch cadence is asked for.
    """
    epochs = run.cfg.optim.epochs
    assert epochs is not None
    crop_probs = None
    run.last_checkpoint = clock()
    bar = tqdm(range(run.start_epoch, epochs + 1), desc=run.label, disable=not progress, initial=run.start_epoch - 1,
               total=epochs, unit="epoch")
    try:
        for epoch in bar:
            record = _train_epoch(run, epoch)
            last = epoch == epochs
            crop_probs = _evaluate(run, record) if last or epoch % run.cfg.optim.eval_every == 0 else None
            _report_epoch(run, record)
            bar.set_postfix(loss=f"{record.train_loss:.3f}", err=f"{record.train_error:.1f}",
                            val=f"{record.val_error:.1f}" if record.val_error is not None else "-", refresh=False)
            signalled = run.stop.signum is not None
            stop = signalled or epoch == stop_after_epoch or (deadline is not None and time.time() >= deadline)
            if last or stop or _checkpoint_due(run, epoch):
                _checkpoint(run, epoch, final=last)
            if signalled and not last:
                raise FoldInterrupted(run.stop.signum, f"{run.label}: stopped by {signal.Signals(run.stop.signum).name} "
                                      f"after epoch {epoch}, with its checkpoint: the same command resumes it")
            if stop and not last:
                return _result(run, None, None)
    finally:
        bar.close()
    return crop_probs


def _checkpoint_due(run: FoldRun, epoch: int) -> bool:
    """Whether a checkpoint is due after `epoch`: every `checkpoint_every` epochs if set, else by wall time."""
    optim = run.cfg.optim
    if optim.checkpoint_every is not None:
        return epoch % optim.checkpoint_every == 0
    return optim.checkpoint_every_s is not None and clock() - run.last_checkpoint >= optim.checkpoint_every_s


def _train_epoch(run: FoldRun, epoch: int) -> EpochRecord:
    """One pass over the training folds at the epoch's learning rate; the epoch's one host sync reads loss and error."""
    cfg, optim, bank = run.cfg, run.cfg.optim, run.train_bank
    t0 = time.perf_counter()
    lr = learning_rate(optim, epoch)
    for group in run.opt.param_groups:
        group["lr"] = lr
    run.model.train()
    if run.pairs is not None:  # the authors' protocol: N/2 pairs per epoch, bs pairs (2 bs rows) per step
        rows, step = run.pairs.draw(len(bank) // 2, run.data_gen), 2 * optim.batch_size
    else:
        rows, step = epoch_order(len(bank), run.data_gen, run.dev), optim.batch_size
    loss_sum = torch.zeros((), device=run.dev)
    wrong = torch.zeros((), device=run.dev, dtype=torch.int64)
    n_seen = 0
    for i in range(0, len(rows), step):
        idx = rows[i : i + step]
        if len(idx) < 2:  # batch norm needs two samples
            continue
        x = train_inputs(bank, draw_crops(bank, idx, cfg.augment, run.data_gen))
        loss, logits, targets = training_step(run.model, run.opt, run.mixer, x, bank.labels[idx], run.precision)
        loss_sum += loss * len(idx)
        wrong += (logits.argmax(1) != targets.argmax(1)).sum()
        n_seen += len(idx)
    loss_total, wrong_total = to_host(torch.stack([loss_sum, wrong.to(loss_sum.dtype)]))  # the epoch's one host sync
    train_loss = loss_total / max(n_seen, 1)
    if not math.isfinite(train_loss):
        raise diverged(run, train_loss, epoch, lr)
    run.elapsed += time.perf_counter() - t0
    run.seen += n_seen
    return EpochRecord(epoch=epoch, lr=lr, train_loss=train_loss, train_error=100.0 * round(wrong_total) / max(n_seen, 1))


def diverged(run: FoldRun, train_loss: float, epoch: int, lr: float) -> TrainingDiverged:
    """The error that fails a fold whose epoch loss is not finite, naming the fold, epoch and learning rate."""
    return TrainingDiverged(f"{run.label}: the training loss became {train_loss} in epoch {epoch} (lr {lr:g}); "
                            "the fold is failed (try a lower optim.lr)")


def _evaluate(run: FoldRun, record: EpochRecord) -> torch.Tensor:
    """The 10-crop test of the held-out fold after this epoch: sets record.val_error, returns the crops' softmax."""
    crop_probs = predict_crops(run.model, run.test_bank, run.cfg.num_crops, run.eval_clips, run.precision)
    record.val_error = clip_error(crop_probs, run.test_bank.labels)
    return crop_probs


def _report_epoch(run: FoldRun, record: EpochRecord) -> None:
    """Keep the epoch in the history and tell tracking (which stops this attempt if another took the fold over)."""
    run.history.append(record)
    if run.tracker is not None and run.run_id is not None:
        run.tracker.ensure_current(run.run_id)  # FoldSuperseded if another attempt took the fold over: stop here
        run.tracker.log_epoch(run.run_id, record)


def _checkpoint(run: FoldRun, epoch: int, final: bool) -> None:
    """Save the fold's state after `epoch`: resumable (optimizer, generators) unless `final` (weights and history only).

    First a look at tracking (FoldSuperseded if another attempt took the fold over: it then writes
    nothing the store sync could push); after the save, buffered epoch metrics go out.
    """
    if run.tracker is not None and run.run_id is not None:
        run.tracker.ensure_current(run.run_id, force=True)
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "config": run.cfg.model_dump(mode="json"), "fold": run.fold, "epoch": epoch,
        "model": run.model.state_dict(), "history": [h.model_dump() for h in run.history],
        "run_id": run.run_id, "elapsed": run.elapsed, "seen": run.seen, "grid_id": run.grid_id,
        "data_fingerprint": run.data_fingerprint,
    }
    if not final:  # what resuming needs; a finished fold drops it (about half the file for SGD)
        own = run.dropout_gen  # a pack's fold: its generator's state is what the global one holds for a lone fold
        ckpt.update(optimizer=run.opt.state_dict(), mixer_rng=run.mixer.state(), data_rng=run.data_gen.get_state(),
                    data_rng_device=run.dev.type,
                    torch_rng=own.get_state() if own is not None and run.dev.type == "cpu" else torch.get_rng_state())
        if run.dev.type == "cuda":
            ckpt["cuda_rng"] = own.get_state() if own is not None else torch.cuda.get_rng_state(run.dev)
    save_checkpoint(run.out / CHECKPOINT, ckpt)
    run.last_checkpoint = clock()
    if run.tracker is not None and run.run_id is not None:
        run.tracker.flush(run.run_id)  # epoch metrics buffered during an MLflow outage go out with the checkpoint


def _finish(run: FoldRun, crop_probs: torch.Tensor | None) -> FoldResult:
    """The fold's result from the last epoch's evaluation; tracking is told first, then result.json is written."""
    if crop_probs is None:  # resumed after the last epoch's checkpoint, before the result was written
        crop_probs = predict_crops(run.model, run.test_bank, run.cfg.num_crops, run.eval_clips, run.precision)
    labels = run.test_bank.labels
    result = _result(run, clip_error(crop_probs, labels), confusion_matrix(crop_probs, labels, run.cfg.num_classes))
    if (run.out / CHECKPOINT).exists():  # bound to the final checkpoint the store keeps beside it
        result = result.model_copy(update={"checkpoint_sha256": checkpoint_digest(run.out / CHECKPOINT)})
    if run.tracker is not None and run.run_id is not None:
        run.tracker.finish_fold(run.run_id, result)  # before result.json: a fold is done only once tracking knows it
    save_result(result, run.out / RESULT)
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
        warnings.warn(f"{path}: written on another device type; random draws restart from the seed", stacklevel=3)


def _result(run: FoldRun, test_error: float | None, confusion: list[list[int]] | None) -> FoldResult:
    """Assemble the FoldResult record for this fold (with the best evaluated epoch, the authors' number)."""
    cfg, history, elapsed = run.cfg, run.history, run.elapsed
    evaluated = [h for h in history if h.val_error is not None]
    best = min(evaluated, key=lambda h: (h.val_error, h.epoch)) if evaluated else None
    return FoldResult(
        dataset=cfg.dataset, setup=cfg.setup_name, model=cfg.model, strategy=cfg.strategy.name, fold=run.fold,
        grid_id=run.grid_id, seed=cfg.seed, test_error=test_error, history=history, confusion=confusion,
        classes=run.classes,
        best_val_error=best.val_error if best else None, best_epoch=best.epoch if best else None,
        train_seconds=round(elapsed, 3), samples_per_second=round(run.seen / elapsed, 2) if elapsed > 0 else None,
        config=cfg.model_dump(mode="json"), git_commit=git_commit(), machine=machine(), device=_device_text(run.dev),
        torch=torch.__version__, data_fingerprint=run.data_fingerprint,
    )


def _device_text(dev: torch.device) -> str:
    """What a fold trained on, for its result: 'cuda: NVIDIA H200' or 'cpu: AMD EPYC 7B13, 2 threads'."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"{dev.type}: {cpu_model()}, {torch.get_num_threads()} threads"
