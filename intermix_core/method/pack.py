"""Fold packs: K folds of one cell trained in one process as one fused model, each fold exactly as if alone.

A GPU step of one small model leaves most of the GPU idle; K folds of one cell (same model, strategy
and schedule) fill it when their layers run as one: the K folds' convolutions as one grouped
convolution (the fold axis inside the channels, HFTA's layout: Wang et al., MLSys 2021), their
BatchNorms as one BatchNorm over K x C channels (each channel still normalised by its own fold's
batch), the K updates as one optimizer call. Dense layers run fold by fold: each reads its own
weights once, where one batched product would first copy every fold's weights into one tensor
(and its gradient back out), two more passes over the largest weights for no fewer bytes read.

Each fold keeps everything a lone training has, so a pack is numerically the same as K separate
trainings (tests/unit/method/test_pack.py: float64, 5 steps, every model, within 1e-10):

- its own model (`nn.Module`, the source of truth): the fused forward concatenates the folds'
  convolution and BatchNorm weights per step (autograd splits the gradients back), BatchNorm
  running statistics are copied back to each fold's buffers, so checkpoints, evaluation and FGSM
  see ordinary per-fold models;
- its own optimizer state: one optimizer holds every fold's parameters in one group (per-tensor
  state, so K separate updates), run as one fused call (Chainer's NesterovAG: its five
  `torch._foreach` passes, weight decay included, each over all folds' tensors at once; PyTorch's
  rule: its fused SGD kernel over all of them); each fold's own optimizer object shares the
  per-parameter state, for its checkpoint;
- its own training clips (indices into one bank of every fold's clips, which the pack shares) and
  its own data generator (epoch order, crops, scale and gain), its own `Mixer` (partners, r,
  phases, the mixing layer: each fold mixes at its own layer, applied on its slice at that stage
  boundary), its own dropout generator (the global generator state a lone fold would have after
  building its model; masks drawn exactly as `nn.Dropout` draws them on a CPU);
- its own loss: the pack's loss is the sum of the folds' losses, whose gradient for fold k's
  weights is fold k's gradient.

On a CUDA device `nn.Dropout` draws its masks in a fused kernel from the global generator; a pack
draws each fold's masks from that fold's generator with `bernoulli_` instead: statistically the
same, not bitwise the same as the fold trained alone (a fold resumed alone after a pack, or the
reverse, continues with valid but different masks). Layers fuse by type (`_HANDLERS`); a model
with a layer the table lacks is refused with its name.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchaudio import transforms

from tqdm import tqdm

from intermix_core.config import ExperimentConfig, OptimConfig
from intermix_core.method import train as lone
from intermix_core.data import load_prepared
from intermix_core.method.bank import ClipBank, TrainInputs, apply_gain, draw_crops, epoch_order, train_inputs
from intermix_core.method.checkpoint import check_same_data, clean_temporaries, fold_lock
from intermix_core.method.devices import resolve_device
from intermix_core.method.evaluate import to_host
from intermix_core.method.mixing import MixBatch, Mixer
from intermix_core.method.optim import learning_rate, make_optimizer
from intermix_core.method.train import (
    FoldInterrupted, FoldRun, FoldTakenOver, FoldTracker, TrainingDiverged, kl_loss, stop_on_signals,
)
from intermix_core.models import StagedModel
from intermix_core.models.envnet import SwapAxes, WaveToImage
from intermix_core.models.m18 import GlobalAvgPool1d
from intermix_core.models.piczak_cnn import LogMelDeltas
from intermix_core.models.soundnet5 import ConvOutputHead
from intermix_core.records import CHECKPOINT, RESULT, EpochRecord, FoldResult, load_result


# --- activations of K folds: two layouts ---------------------------------------------------------


@dataclass
class Packed:
    """The K folds' activations: 'fold' layout (K, B, ...) or 'channel' layout (B, K*C, ...) (fold axis in the channels)."""

    t: torch.Tensor
    layout: str  # "fold" or "channel"
    k: int

    def fold(self) -> torch.Tensor:
        """(K, B, ...) (a view of a channel-layout tensor)."""
        if self.layout == "fold":
            return self.t
        b, kc, *rest = self.t.shape
        return self.t.reshape(b, self.k, kc // self.k, *rest).transpose(0, 1)

    def channel(self) -> torch.Tensor:
        """(B, K*C, ...): one grouped convolution or one BatchNorm serves all folds."""
        if self.layout == "channel":
            return self.t
        k, b, c, *rest = self.t.shape
        return self.t.transpose(0, 1).reshape(b, k * c, *rest)

    def merged(self) -> torch.Tensor:
        """(K*B, ...): for per-example layers without weights, the folds are just more examples."""
        f = self.fold()
        return f.reshape(-1, *f.shape[2:])

    def from_merged(self, t: torch.Tensor) -> Packed:
        """A per-example layer's (K*B, ...) output back in fold layout."""
        return Packed(t.reshape(self.k, -1, *t.shape[1:]), "fold", self.k)


def _cat(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The folds' tensors stacked along dim 0 (the tensor itself for one fold, None if the layer has none)."""
    if tensors[0] is None:
        return None
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))  # type: ignore[arg-type]


# --- fused layers -----------------------------------------------------------------------------------

Handler = Callable[[Sequence[nn.Module], Packed, "PackContext"], Packed]


KERNELS = ("auto", "grouped", "per_fold")


@dataclass
class PackContext:
    """What a fused forward needs besides the weights: each fold's dropout generator, and how to run weighted layers.

    `per_fold`: the folds' convolutions run one call per fold (the kernels a lone fold runs: bitwise
    its numbers), else as one grouped convolution.
    """

    dropout_gens: Sequence[torch.Generator]
    per_fold: bool = False


def _conv(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """K convolutions as one grouped convolution over the channel layout."""
    m = ms[0]
    assert isinstance(m, (nn.Conv1d, nn.Conv2d))
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise NotImplementedError(f"a pack cannot fuse {m!r} (padding mode {m.padding_mode!r}, padding {m.padding!r})")
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    x = h.channel()
    if ctx.per_fold and len(ms) > 1:
        n = x.shape[1] // len(ms)
        out = torch.cat([conv(x[:, k * n:(k + 1) * n], c.weight, c.bias, m.stride, m.padding, m.dilation, m.groups)
                         for k, c in enumerate(ms)], dim=1)
    else:
        out = conv(x, _cat([c.weight for c in ms]), _cat([c.bias for c in ms]), m.stride, m.padding, m.dilation,
                   m.groups * len(ms))
    return Packed(out, "channel", h.k)


def _batch_norm(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """K BatchNorms as one over K*C channels (per-channel statistics: each fold's own), running stats copied back."""
    m = ms[0]
    assert isinstance(m, _BatchNorm)
    if not (m.training and m.track_running_stats and m.momentum is not None):
        raise NotImplementedError(f"a pack trains {m!r} only in training mode with running stats and a momentum")
    running = [_cat([b.running_mean for b in ms]), _cat([b.running_var for b in ms])]
    out = F.batch_norm(h.channel(), running[0], running[1], _cat([b.weight for b in ms]), _cat([b.bias for b in ms]),
                       True, m.momentum, m.eps)
    with torch.no_grad():
        n = m.num_features
        for k, b in enumerate(ms):
            b.num_batches_tracked.add_(1)  # type: ignore[union-attr, operator]
            if len(ms) > 1:  # one fold used its own buffers in place
                b.running_mean.copy_(running[0][k * n:(k + 1) * n])  # type: ignore[index, union-attr]
                b.running_var.copy_(running[1][k * n:(k + 1) * n])  # type: ignore[index, union-attr]
    return Packed(out, "channel", h.k)


def _linear(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """K dense layers over the fold layout (K, B, in) -> (K, B, out), fold by fold (the weights are read in place)."""
    x = h.fold()
    return Packed(torch.stack([F.linear(x[k], m.weight, m.bias) for k, m in enumerate(ms)]),  # type: ignore[arg-type]
                  "fold", h.k)


def _dropout(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """Each fold's mask from its own generator, drawn as `nn.Dropout` draws it on a CPU (bernoulli(1 - p) / (1 - p))."""
    m = ms[0]
    assert isinstance(m, nn.Dropout)
    if not m.training or m.p == 0.0:
        return h
    x = h.fold()
    masks = []
    for gen in ctx.dropout_gens:
        noise = torch.empty(x.shape[1:], dtype=x.dtype, device=x.device).bernoulli_(1.0 - m.p, generator=gen)
        masks.append(noise.div_(1.0 - m.p) if m.p < 1.0 else noise)
    return Packed(x * torch.stack(masks), "fold", h.k)


def _channelwise(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """A per-channel layer without weights (ReLU, max pooling, averaging over time): in whatever layout h is."""
    if h.layout == "channel":
        return Packed(ms[0](h.t), "channel", h.k)
    return h.from_merged(ms[0](h.merged()))


def _per_example(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """A per-example layer without trained weights (reshapes, the log-mel front end): the folds as more examples."""
    return h.from_merged(ms[0](h.merged()))


def _sequential(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """The folds' Sequentials layer by layer."""
    for layers in zip(*ms):
        h = fuse_forward(layers, h, ctx)
    return h


def _log_mel_deltas(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """PiczakCNN's front end: the features per example, then the folds' own BatchNorms."""
    m = ms[0]
    assert isinstance(m, LogMelDeltas)
    feats = h.from_merged(m.features(h.merged()))
    with torch.autocast(device_type=feats.t.device.type, enabled=False):
        return _batch_norm([x.norm for x in ms], feats, ctx)  # type: ignore[attr-defined]


def _conv_output_head(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """SoundNet5's head: the folds' conv5, averaged over time."""
    out = _conv([m.conv5 for m in ms], h, ctx)  # type: ignore[attr-defined]
    return Packed(out.t.mean(dim=-1), "channel", h.k)


# exact types first: a subclass of a listed type is not assumed to behave like it
_HANDLERS: dict[type, Handler] = {
    nn.Sequential: _sequential, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm, nn.Linear: _linear, nn.Dropout: _dropout,
    nn.ReLU: _channelwise, nn.MaxPool1d: _channelwise, nn.MaxPool2d: _channelwise, GlobalAvgPool1d: _channelwise,
    nn.Flatten: _per_example, nn.Unflatten: _per_example, WaveToImage: _per_example, SwapAxes: _per_example,
    transforms.MelSpectrogram: _per_example, transforms.AmplitudeToDB: _per_example,
    transforms.ComputeDeltas: _per_example,
    LogMelDeltas: _log_mel_deltas, ConvOutputHead: _conv_output_head,
}


def fuse_forward(ms: Sequence[nn.Module], h: Packed, ctx: PackContext) -> Packed:
    """Run the K folds' copies of one layer (same type and shape) as one."""
    handler = _HANDLERS.get(type(ms[0]))
    if handler is None:
        raise NotImplementedError(f"a fold pack cannot fuse {type(ms[0]).__name__} layers yet (pack.py, _HANDLERS)")
    return handler(ms, h, ctx)


def check_packable(model: nn.Module) -> None:
    """Refuse a model with a layer a pack cannot fuse, naming it (before any training starts)."""
    def walk(m: nn.Module) -> None:
        if type(m) not in _HANDLERS:
            raise NotImplementedError(f"a fold pack cannot fuse {type(m).__name__} layers yet (pack.py, _HANDLERS)")
        if type(m) is nn.Sequential:
            for child in m:
                walk(child)

    for stage in (*model.stages, model.head):  # type: ignore[union-attr]
        walk(stage)


def per_fold_kernels(kernels: str, device: torch.device) -> bool:
    """Whether a pack runs its convolutions fold by fold: 'per_fold', or 'auto' off a GPU (where grouping gains
    little and a lone fold's kernels keep the pack bitwise equal to its folds trained alone); 'grouped' never."""
    if kernels not in KERNELS:
        raise ValueError(f"pack kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    return kernels == "per_fold" or (kernels == "auto" and device.type != "cuda")


def pack_forward(models: Sequence[StagedModel], x: torch.Tensor, mixes: Sequence[MixBatch | None],
                 dropout_gens: Sequence[torch.Generator], kernels: str = "auto") -> torch.Tensor:
    """Logits (K, B, classes) of K folds' models on their inputs x (K, B, T); fold k mixes at its own layer."""
    ctx = PackContext(dropout_gens, per_fold_kernels(kernels, x.device))
    h = _mix_at(Packed(x, "fold", len(models)), 0, mixes)
    for m, stages in enumerate(zip(*(model.stages for model in models)), start=1):
        h = _mix_at(fuse_forward(stages, h, ctx), m, mixes)
    return fuse_forward([model.head for model in models], h, ctx).fold()


def _mix_at(h: Packed, layer: int, mixes: Sequence[MixBatch | None]) -> Packed:
    """Apply each fold's mix to its own slice if that fold mixes at `layer` (the others pass unchanged)."""
    if not any(mix is not None and mix.layer == layer for mix in mixes):
        return h
    f = h.fold()
    parts = [mix(f[k]) if mix is not None and mix.layer == layer else f[k] for k, mix in enumerate(mixes)]
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return Packed(torch.stack([p.to(dtype) for p in parts]), "fold", h.k)


# --- one step of a pack -----------------------------------------------------------------------------


def make_pack_optimizer(fold_opts: Sequence[torch.optim.Optimizer], optim: OptimConfig, lr: float
                        ) -> torch.optim.Optimizer:
    """One optimizer over every fold's parameters (one group: one fused update), sharing each fold optimizer's state."""
    params = [p for opt in fold_opts for group in opt.param_groups for p in group["params"]]
    pack_opt = make_optimizer(params, optim, lr)
    for opt in fold_opts:
        for group in opt.param_groups:
            for p in group["params"]:
                pack_opt.state[p] = opt.state[p]  # the same dict: the fold's checkpoint sees the pack's updates
    return pack_opt


def set_lr(opts: Sequence[torch.optim.Optimizer], lr: float) -> None:
    """The epoch's learning rate in every group of every optimizer given."""
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr


def pack_step(
    models: Sequence[StagedModel], opt: torch.optim.Optimizer, mixers: Sequence[Mixer], xs: Sequence[TrainInputs],
    ys: Sequence[torch.Tensor], dropout_gens: Sequence[torch.Generator], precision: str = "fp32", kernels: str = "auto",
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """One update of K folds on their batches (same batch size); (each fold's loss, logits (K, B, C), each's targets).

    Fold by fold as `train.training_step`: the mixer's draws, gains, the KL loss; then one backward of
    the summed losses and one optimizer step (only the parameters of these folds have gradients).
    """
    inputs, targets, mixes = [], [], []
    for mixer, x, y in zip(mixers, xs, ys):
        batch = mixer.draw(x.crops, y, x.gains)
        mixes.append(batch)
        if batch is None:
            inputs.append(apply_gain(x.crops, x.gains))
            targets.append(mixer.targets(y))
        else:
            inputs.append(batch.inputs)
            targets.append(batch.targets)
    device = inputs[0].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = pack_forward(models, torch.stack(inputs), mixes, dropout_gens, kernels)
    losses = [kl_loss(logits[k], t) for k, t in enumerate(targets)]
    opt.zero_grad(set_to_none=True)
    (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
    opt.step()
    return [loss.detach() for loss in losses], logits.detach(), targets


def dropout_generator(device: torch.device) -> torch.Generator:
    """A generator holding the state the global generator of `device` has now (what a lone fold's dropout draws from)."""
    gen = torch.Generator(device=device)
    gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return gen


def steps_per_epoch(n_rows: int, step: int) -> int:
    """Steps an epoch of `n_rows` rows takes at `step` rows per step."""
    return math.ceil(n_rows / step)


# --- training a pack ---------------------------------------------------------------------------------


def train_pack(
    cfg: ExperimentConfig,
    data_dir: str | Path,
    folds: Sequence[int],
    out_dirs: Sequence[str | Path],
    *,
    tracker: FoldTracker | None = None,
    grid_id: str = "local",
    progress: bool = True,
    device: str | None = None,
    stop_after_epoch: int | None = None,
    eval_clips: int | None = None,
    deadline: float | None = None,
) -> dict[int, FoldResult | Exception]:
    """Train `folds` of one cell as one pack, fold f in out_dirs[i] exactly as `train.train_fold` would; per fold its
    result, or the error that ended it alone (TrainingDiverged, FoldTakenOver).

    Each fold folder is locked, cleaned, resumed from its own checkpoint and written as a lone fold's;
    a finished fold returns its result.json. Folds resumed at different epochs train as successive
    packs (from the earliest start). A fold whose loss becomes non-finite ends FAILED alone; a
    signal checkpoints every fold and raises FoldInterrupted; any other error ends every fold's run.
    """
    if len(set(folds)) != len(folds) or len(folds) != len(out_dirs) or not folds:
        raise ValueError(f"a pack needs distinct folds, one folder each; got folds {list(folds)}")
    dev = resolve_device(device)
    cfg = cfg.resolved()
    outcomes: dict[int, FoldResult | Exception] = {}
    data_fingerprint = load_prepared(data_dir, verify=False).manifest.data_fingerprint()  # cheap: the manifest
    with contextlib.ExitStack() as held:
        runs: list[FoldRun] = []
        for fold, out_dir in zip(folds, out_dirs):
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(fold_lock(out))
            clean_temporaries(out)
            state = lone._checkpoint_of(cfg, fold, out)
            check_same_data(state, data_fingerprint, out / CHECKPOINT, data_dir)  # as a lone fold: never mix two
            if state is not None and state["epoch"] >= cfg.optim.epochs and (out / RESULT).exists():  # type: ignore[operator]
                outcomes[fold] = load_result(out / RESULT)  # finished earlier
                continue
            run = lone._set_up(cfg, data_dir, fold, out, dev, state, tracker, eval_clips)
            run.grid_id, run.data_fingerprint = grid_id, data_fingerprint
            run.dropout_gen = dropout_generator(dev)  # the global state a lone fold would go on from (seeded or resumed)
            runs.append(run)
        if runs:
            check_packable(runs[0].model)
            if cfg.optim.compile and len(runs) > 1:
                warnings.warn("optim.compile: a pack runs its fused layers eagerly (the compiled stages are the lone "
                              "fold's); the folds train as set, uncompiled", stacklevel=2)
        if len(runs) > 1:
            _share_training_clips(runs, data_dir, dev)
        if tracker is not None:
            for run in runs:
                run.run_id = tracker.start_fold(cfg, run.fold, grid_id, resume_run_id=run.run_id)
        for start in sorted({run.start_epoch for run in runs}):
            group = [run for run in runs if run.start_epoch == start]
            outcomes.update(_train_group(group, progress, stop_after_epoch, deadline))
    return {fold: outcomes[fold] for fold in folds}


def _share_training_clips(runs: Sequence[FoldRun], data_dir: str | Path, dev: torch.device) -> None:
    """One bank of every fold's clips for the whole pack (not one per fold: K times the clips on the device); each
    fold keeps the indices of its training clips in it. Crops are windows of a clip and its padding, so a fold's
    crops from the shared bank are the ones its own bank gives."""
    cfg = runs[0].cfg
    data = load_prepared(data_dir, verify=False)  # checked by the folds' own set-up
    folds = sorted(data.folds)
    scale_max = cfg.augment.scale_max if cfg.augment.scale else 1.0
    shared = ClipBank.from_prepared(data, folds, dev, length=cfg.crop_length, scale_max=scale_max)
    sizes = [len(data.labels(f)) for f in folds]
    starts = dict(zip(folds, [sum(sizes[:i]) for i in range(len(folds))]))
    for run in runs:
        index = torch.cat([torch.arange(starts[f], starts[f] + n, device=dev)
                           for f, n in zip(folds, sizes) if f != run.fold])
        if not torch.equal(shared.labels[index], run.train_bank.labels):
            raise RuntimeError(f"{run.label}: the shared bank does not hold its training clips in their order")
        run.train_bank, run.train_index = shared, index


def pack_label(runs: Sequence[FoldRun]) -> str:
    """'esc10/envnet_v2/intermix/folds 1,2,3'."""
    return runs[0].label.rsplit("/", 1)[0] + "/folds " + ",".join(str(r.fold) for r in runs)


def _train_group(runs: list[FoldRun], progress: bool, stop_after_epoch: int | None, deadline: float | None
                 ) -> dict[int, FoldResult | Exception]:
    """Folds at the same start epoch, trained together; the runs still going end KILLED or FAILED on an error."""
    live = list(runs)
    with stop_on_signals() as stop:
        for run in runs:
            run.stop = stop
        try:
            return _train_epochs(live, progress, stop_after_epoch, deadline)
        except BaseException as err:  # a failure, a signal, a second Ctrl-C: every fold still going ends saying which
            for run in live:
                lone._end_run(run, err)
            raise


def _train_epochs(live: list[FoldRun], progress: bool, stop_after_epoch: int | None, deadline: float | None
                  ) -> dict[int, FoldResult | Exception]:
    """The epoch loop of `train._train` for a pack; `live` (the folds still training) shrinks as folds fail alone."""
    first = live[0]
    optim, epochs, label = first.cfg.optim, first.cfg.optim.epochs, pack_label(live)
    assert epochs is not None
    outcomes: dict[int, FoldResult | Exception] = {}
    crop_probs: dict[int, torch.Tensor | None] = {run.fold: None for run in live}
    pack_opt = make_pack_optimizer([run.opt for run in live], optim, learning_rate(optim, first.start_epoch))
    for run in live:
        run.last_checkpoint = lone.clock()

    def drop(run: FoldRun, err: Exception, end: bool) -> None:
        outcomes[run.fold] = err
        live.remove(run)
        tqdm.write(f"intermix: {err}; the other folds of the pack go on", file=sys.stderr)
        if end:
            lone._end_run(run, err)

    bar = tqdm(range(first.start_epoch, epochs + 1), desc=label, disable=not progress, initial=first.start_epoch - 1,
               total=epochs, unit="epoch")
    try:
        for epoch in bar:
            records = {}
            for run, record in _train_pack_epoch(live, pack_opt, epoch):
                if isinstance(record, TrainingDiverged):
                    drop(run, record, end=True)
                else:
                    records[run.fold] = record
            last = epoch == epochs
            for run in list(live):
                record = records[run.fold]
                crop_probs[run.fold] = lone._evaluate(run, record) if last or epoch % optim.eval_every == 0 else None
                try:
                    lone._report_epoch(run, record)
                except FoldTakenOver as err:
                    drop(run, err, end=False)  # the fold's run belongs to the attempt that took it over
            if not live:
                break
            signalled = live[0].stop.signum is not None
            stop = signalled or epoch == stop_after_epoch or (deadline is not None and time.time() >= deadline)
            if last or stop or lone._checkpoint_due(live[0], epoch):
                for run in list(live):
                    try:
                        lone._checkpoint(run, epoch, final=last)
                    except FoldTakenOver as err:
                        drop(run, err, end=False)
            if signalled and not last:
                signum = live[0].stop.signum
                assert signum is not None
                raise FoldInterrupted(signum, f"{pack_label(live)}: stopped by {signal.Signals(signum).name} after "
                                      f"epoch {epoch}, with every fold's checkpoint: the same command resumes them")
            if stop and not last:
                outcomes.update({run.fold: lone._result(run, None, None) for run in live})
                return outcomes
    finally:
        bar.close()
    for run in live:
        outcomes[run.fold] = lone._finish(run, crop_probs[run.fold])
    return outcomes


def _train_pack_epoch(live: Sequence[FoldRun], pack_opt: torch.optim.Optimizer, epoch: int
                      ) -> list[tuple[FoldRun, EpochRecord | TrainingDiverged]]:
    """One epoch of every fold of the pack, each on its own data order and draws, as `train._train_epoch`; one host read.

    Steps where folds have batches of different sizes (folds of different lengths, an epoch's last
    batch) run as one pack step per batch size.
    """
    cfg = live[0].cfg
    optim = cfg.optim
    t0 = time.perf_counter()
    lr = learning_rate(optim, epoch)
    set_lr([pack_opt, *(run.opt for run in live)], lr)
    rows, steps = [], []
    for run in live:
        run.model.train()
        n = len(run.train_index) if run.train_index is not None else len(run.train_bank)
        if run.pairs is not None:  # the authors' protocol: N/2 pairs per epoch, bs pairs (2 bs rows) per step
            local = run.pairs.draw(n // 2, run.data_gen)
            steps.append(2 * optim.batch_size)
        else:
            local = epoch_order(n, run.data_gen, run.dev)
            steps.append(optim.batch_size)
        rows.append(local if run.train_index is None else run.train_index[local])  # the fold's clips in the bank
    loss_sums = [torch.zeros((), device=run.dev) for run in live]
    wrongs = [torch.zeros((), device=run.dev, dtype=torch.int64) for run in live]
    seen = [0] * len(live)
    for i in range(max(steps_per_epoch(len(r), s) for r, s in zip(rows, steps))):
        batches: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for k, (r, s) in enumerate(zip(rows, steps)):
            idx = r[i * s : (i + 1) * s]
            if len(idx) >= 2:  # batch norm needs two samples
                batches.setdefault(len(idx), []).append((k, idx))
        for group in batches.values():
            runs = [live[k] for k, _ in group]
            xs = [train_inputs(run.train_bank, draw_crops(run.train_bank, idx, cfg.augment, run.data_gen))
                  for run, (_, idx) in zip(runs, group)]
            ys = [run.train_bank.labels[idx] for run, (_, idx) in zip(runs, group)]
            losses, logits, targets = pack_step([run.model for run in runs], pack_opt, [run.mixer for run in runs],
                                                xs, ys, [run.dropout_gen for run in runs],  # type: ignore[misc]
                                                runs[0].precision)  # optim.precision as it runs here (`auto` chosen)
            for j, (k, idx) in enumerate(group):
                loss_sums[k] += losses[j] * len(idx)
                wrongs[k] += (logits[j].argmax(1) != targets[j].argmax(1)).sum()
                seen[k] += len(idx)
    totals = to_host(torch.stack([torch.stack([s, w.to(s.dtype)]) for s, w in zip(loss_sums, wrongs)]))  # one read
    elapsed = time.perf_counter() - t0
    out: list[tuple[FoldRun, EpochRecord | TrainingDiverged]] = []
    for run, (loss_total, wrong_total), n in zip(live, totals, seen):  # type: ignore[misc]
        train_loss = loss_total / max(n, 1)
        if not math.isfinite(train_loss):
            out.append((run, lone.diverged(run, train_loss, epoch, lr)))
            continue
        run.elapsed += elapsed  # the pack's wall time: a fold's samples/s is its share, the pack's is K times it
        run.seen += n
        out.append((run, EpochRecord(epoch=epoch, lr=lr, train_loss=train_loss,
                                     train_error=100.0 * round(wrong_total) / max(n, 1))))
    return out
