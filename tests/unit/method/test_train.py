"""Training: determinism, resume == uninterrupted, the authors' protocol, safe checkpoints, real learning.

Runs on the ESC-10 demo clips shipped in the package (intermix_core.testing), so it runs everywhere.
"""

import multiprocessing
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from intermix_core.config import parse_config
from intermix_core.data import prepare_dataset
from intermix_core.method.checkpoint import CHECKPOINT_FORMAT, FoldBusy, fold_lock, load_checkpoint, model_from_checkpoint
from intermix_core.method.train import TrainingDiverged, train_fold
from intermix_core.models import model_class
from intermix_core.data import load_prepared
from intermix_core.records import load_result
from intermix_core.testing import demo_subset

from host_reads import HostReads as _HostReads
from tiny import tiny_cfg


@pytest.mark.parametrize("strategy", ["standard", "intermix", "intermix_official", "speechmix_official",
                                      "intermix_vanilla_signed", "intermix_hidden_linear"])
def test_same_seed_same_result(tiny_data, tmp_path, strategy):
    cfg = tiny_cfg(strategy)
    a = train_fold(cfg, tiny_data, 1, tmp_path / "a", progress=False)
    b = train_fold(cfg, tiny_data, 1, tmp_path / "b", progress=False)
    assert a.history == b.history and a.test_error == b.test_error
    assert [h.val_error is not None for h in a.history] == [False, True, True]
    assert len(a.history) == 3 and a.confusion is not None and sum(map(sum, a.confusion)) == 10
    # the class names come from the prepared data's manifest, so the confusion matrix can be labelled
    assert a.classes == load_prepared(tiny_data).manifest.classes and "dog" in a.classes
    # the best evaluated epoch, the authors' number, is recorded beside the last epoch's
    evaluated = [h for h in a.history if h.val_error is not None]
    assert a.best_val_error == min(h.val_error for h in evaluated)
    assert a.best_epoch in {h.epoch for h in evaluated if h.val_error == a.best_val_error}


@pytest.mark.parametrize(("eval_every", "errors", "best"), [
    (1, [60.0, 20.0, 30.0, 50.0], (20.0, 2)),  # best in the middle, the last epoch worse
    (2, [40.0, 10.0], (10.0, 4)),  # only epochs 2 and 4 are evaluated: the best is the last evaluated one
    (1, [30.0, 30.0, 50.0, 40.0], (30.0, 1)),  # a tie: the earlier epoch
])
def test_best_epoch_is_the_lowest_evaluated_error_not_the_last(tiny_data, tmp_path, monkeypatch, eval_every, errors,
                                                              best):
    """A history whose best is not the last: the result keeps the last epoch's error and the best one apart."""
    import intermix_core.method.train as train_module

    scripted = iter(errors)
    real = train_module.clip_error
    last: list[float] = []

    def scripted_error(probs, labels):  # the 10-crop test's error after each evaluated epoch, then the final one
        real(probs, labels)
        last.append(next(scripted, last[-1] if last else 0.0))
        return last[-1]

    monkeypatch.setattr(train_module, "clip_error", scripted_error)
    result = train_fold(tiny_cfg("standard", epochs=4, eval_every=eval_every), tiny_data, 1, tmp_path, progress=False)
    assert [h.val_error for h in result.history if h.val_error is not None] == errors
    assert [h.epoch for h in result.history if h.val_error is not None] == list(range(eval_every, 5, eval_every))
    assert (result.best_val_error, result.best_epoch) == best
    assert result.test_error == errors[-1]  # the project's number is the last epoch's, whatever the best was


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    cfg = tiny_cfg("intermix", checkpoint_every=1)
    full = train_fold(cfg, tiny_data, 1, tmp_path / "full", progress=False)
    part = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False, stop_after_epoch=2)
    assert part.test_error is None and len(part.history) == 2
    resumed = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False)
    assert resumed.history == full.history and resumed.test_error == full.test_error
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished fold is not retrained
    again = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False)
    assert again == load_result(tmp_path / "resumed" / "result.json")


def test_final_checkpoint_keeps_only_what_evaluation_needs(tiny_data, tmp_path):
    train_fold(tiny_cfg("bc", epochs=2, checkpoint_every=1), tiny_data, 1, tmp_path, progress=False,
               stop_after_epoch=1)
    resumable = load_checkpoint(tmp_path / "checkpoint.pt")
    assert {"optimizer", "mixer_rng", "data_rng", "torch_rng"} <= resumable.keys()
    train_fold(tiny_cfg("bc", epochs=2, checkpoint_every=1), tiny_data, 1, tmp_path, progress=False)
    final = load_checkpoint(tmp_path / "checkpoint.pt")
    assert final["epoch"] == 2 and final["format"] == CHECKPOINT_FORMAT
    assert not {"optimizer", "mixer_rng", "data_rng", "torch_rng"} & final.keys()
    model, cfg = model_from_checkpoint(final)
    assert cfg.strategy.name == "bc" and not model.training


def test_checkpoint_of_another_config_is_refused(tiny_data, tmp_path):
    train_fold(tiny_cfg("bc", epochs=1), tiny_data, 1, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train_fold(tiny_cfg("intermix", epochs=1), tiny_data, 1, tmp_path / "x", progress=False)


def test_a_checkpoint_resumes_under_other_execution_options_and_from_an_older_config(tiny_data, tmp_path):
    """channels_last, compile and cudnn_benchmark change how a step runs, not what it computes: a fold stopped under
    one setting resumes under another (a tuned study's second call may pick another); a checkpoint written before a
    field existed resumes with that field at its default. The precision is arithmetic: a change is refused."""
    import torch as _torch

    from intermix_core.method.checkpoint import save_checkpoint

    train_fold(tiny_cfg("standard", checkpoint_every=1), tiny_data, 1, tmp_path / "a", progress=False,
               stop_after_epoch=1)
    path = tmp_path / "a" / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["config"]["optim"]["cudnn_benchmark"]  # as written before the option existed
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match="another configuration"):
        train_fold(tiny_cfg("standard", checkpoint_every=1, precision="bf16"), tiny_data, 1, tmp_path / "a",
                   progress=False)
    before = _torch.backends.cudnn.benchmark
    try:
        done = train_fold(tiny_cfg("standard", checkpoint_every=1, channels_last=True, cudnn_benchmark=True),
                          tiny_data, 1, tmp_path / "a", progress=False)
    finally:
        _torch.backends.cudnn.benchmark = before
    assert len(done.history) == 3 and done.test_error is not None
    assert load_checkpoint(path)["config"]["optim"]["cudnn_benchmark"] is True  # now under the options it ran with


def test_authors_protocol_steps_on_64_rows_of_adjacent_pairs(tiny_data, tmp_path, monkeypatch):
    """intermix_official: N/2 different-class pairs per epoch, batch_size pairs = 2 x batch_size rows per step."""
    import intermix_core.method.train as train_module

    shapes, partners = [], []
    real_step = train_module.training_step

    def spy(model, opt, mixer, x, y, precision="fp32"):
        shapes.append(tuple(x.crops.shape))
        batch = mixer.draw(x.crops, y)
        partners.append((y, batch.partner))
        mixer.layer_generator.manual_seed(0)  # the spy's draw must not shift the real one's layer
        return real_step(model, opt, mixer, x, y, precision)

    monkeypatch.setattr(train_module, "training_step", spy)
    cfg = tiny_cfg("intermix_official", epochs=1, batch_size=3)
    assert cfg.resolved_optim().update_rule == "chainer"
    train_fold(cfg, tiny_data, 1, tmp_path, progress=False)
    # 10 training clips -> 5 pairs per epoch -> steps of 3 pairs (6 rows) and 2 pairs (4 rows)
    assert [s[0] for s in shapes] == [6, 4]
    for y, partner in partners:
        assert partner.tolist() == [i ^ 1 for i in range(len(y))]
        assert (y != y[partner]).all()


def test_a_diverging_loss_fails_the_fold_naming_the_epoch(tiny_data, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) in epoch 1 \(lr 1e\+30\)"):
        train_fold(tiny_cfg("standard", lr=1e30), tiny_data, 1, tmp_path, progress=False)
    assert not (tmp_path / "result.json").exists()


class _Exploit:
    """A pickle whose loading runs a command: what a crafted checkpoint.pt in a bucket would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "fold"
    out.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "config": {}, "payload": _Exploit(marker)}, out / "checkpoint.pt")
    for call in (lambda: load_checkpoint(out / "checkpoint.pt"),
                 lambda: train_fold(tiny_cfg("standard"), tiny_data, 1, out, progress=False)):
        with pytest.raises(ValueError, match="not a loadable intermix checkpoint, refused"):
            call()
    (out / "raw.pt").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(out / "raw.pt")
    assert not marker.exists()


def test_checkpoints_missing_keys_or_damaged_are_named(tmp_path):
    torch.save({"format": CHECKPOINT_FORMAT, "config": {}, "fold": 1, "epoch": 3}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a\.pt: not an intermix checkpoint \(missing model, history\)"):
        load_checkpoint(tmp_path / "a.pt")
    (tmp_path / "b.pt").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match=r"b\.pt: not a loadable intermix checkpoint"):
        load_checkpoint(tmp_path / "b.pt")
    torch.save([1, 2], tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"c\.pt: not an intermix checkpoint \(expected a mapping"):
        load_checkpoint(tmp_path / "c.pt")


def _hold_lock(folder: str, ready, release) -> None:
    with fold_lock(Path(folder)):
        ready.set()
        release.wait(30)


def test_a_second_trainer_of_the_same_fold_folder_is_refused_naming_the_holder(tiny_data, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(FoldBusy, match=rf"in use by pid {holder.pid} on .* since"):
            train_fold(tiny_cfg("standard", epochs=1), tiny_data, 1, tmp_path, progress=False)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        release.set()
        holder.join(30)
    result = train_fold(tiny_cfg("standard", epochs=1), tiny_data, 1, tmp_path, progress=False)  # free again
    assert result.test_error is not None


@pytest.mark.slow
def test_real_training_beats_chance(tmp_path):
    """Folds 2-3 of the demo set (80 real clips) train, fold 1 (40 clips) tests: error clearly below chance (90%).

    The demo grid's earlier setting (M18 on 2 s crops, bf16 forward, 20 epochs). 70% error is 12 of 40 clips right;
    a chance-level classifier gets that many with probability below 1e-4.
    """
    src = demo_subset(tmp_path / "src")
    prepare_dataset(src, "esc10", tmp_path / "prep", model_class("m18").sample_rate, progress=False)
    cfg = parse_config({
        "dataset": "esc10", "model": "m18", "strategy": "standard", "seed": 0, "input_length": 16000,
        "optim": {"epochs": 20, "batch_size": 16, "eval_every": 5, "precision": "bf16"},
    })
    t0 = time.perf_counter()
    result = train_fold(cfg, tmp_path / "prep", 1, tmp_path / "out", progress=False)
    print(f"error by epoch ({time.perf_counter() - t0:.0f} s):", [(h.epoch, h.train_loss, h.val_error) for h in result.history])
    assert result.test_error is not None and result.test_error < 70.0


# ------------------------------------------------------------------ bookkeeping that keeps up with GPU epochs


def _saved_epochs(monkeypatch) -> list[int]:
    """Record the epoch of every checkpoint train_fold writes (the real save still runs)."""
    import intermix_core.method.train as train_module

    epochs: list[int] = []
    real = train_module.save_checkpoint

    def spy(path, state):  # noqa: ANN001, ANN202
        epochs.append(state["epoch"])
        real(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    return epochs


def test_checkpoints_follow_wall_time_not_epochs(tiny_data, tmp_path, monkeypatch):
    """checkpoint_every_s: a checkpoint once 60 s passed since the last (on a clock stepping 25 s per look), and
    after the last epoch; checkpoint_every (epochs), when set, replaces it."""
    import intermix_core.method.train as train_module

    ticks = iter(range(0, 10_000, 25))
    monkeypatch.setattr(train_module, "clock", lambda: float(next(ticks)))
    epochs = _saved_epochs(monkeypatch)
    cfg = tiny_cfg("standard", epochs=7, eval_every=7, checkpoint_every=None, checkpoint_every_s=60.0)
    train_fold(cfg, tiny_data, 1, tmp_path / "time", progress=False)
    # looks at 0 (start), 25, 50, 75 -> due after epoch 3; saved at 100; 125, 150, 175 -> due after epoch 6; last: 7
    assert epochs == [3, 6, 7]
    epochs.clear()
    train_fold(tiny_cfg("standard", epochs=5, eval_every=5, checkpoint_every=2), tiny_data, 1, tmp_path / "epochs",
               progress=False)
    assert epochs == [2, 4, 5]


def test_resume_equals_uninterrupted_with_the_time_cadence(tiny_data, tmp_path, monkeypatch):
    """Stopped at a deadline and resumed, with checkpoints by wall time (default cadence, never due in this short
    run): the stop writes a checkpoint, and the resumed fold ends bit-identical to an uninterrupted one."""
    cfg = tiny_cfg("intermix", checkpoint_every=None)
    assert cfg.optim.checkpoint_every_s == 60.0
    epochs = _saved_epochs(monkeypatch)
    full = train_fold(cfg, tiny_data, 1, tmp_path / "full", progress=False)
    assert epochs == [3]  # nothing due before the last epoch
    part = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False, deadline=0.0)  # past: stop after epoch 1
    assert part.test_error is None and len(part.history) == 1 and epochs[-1] == 1
    resumed = train_fold(cfg, tiny_data, 1, tmp_path / "resumed", progress=False)
    assert resumed.history == full.history and resumed.test_error == full.test_error
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["standard", "bc", "intermix", "intermix_official"])
def test_an_epoch_and_an_evaluation_read_the_device_once(tiny_data, tmp_path, monkeypatch, strategy):
    """Nothing on the training path waits for the host per step: no syncing operator at all, and one read
    (`to_host`) per epoch and per 10-crop evaluation. (On a CPU the reads are free; on a GPU each is one sync.)"""
    import intermix_core.method.train as train_module
    from intermix_core.method import evaluate

    cfg = tiny_cfg(strategy, augment={"scale": True, "gain": True}).resolved()
    run = train_module._set_up(cfg, tiny_data, 1, tmp_path, torch.device("cpu"), None, None, None)
    reads: list[object] = []
    real = evaluate.to_host

    def spy(values):  # noqa: ANN001, ANN202
        reads.append(values.shape)
        return real(values)

    monkeypatch.setattr(train_module, "to_host", spy)
    monkeypatch.setattr(evaluate, "to_host", spy)
    with _HostReads() as mode:
        record = train_module._train_epoch(run, 1)
    assert mode.seen == [] and len(reads) == 1
    with _HostReads() as mode:
        train_module._evaluate(run, record)
    assert mode.seen == [] and len(reads) == 2 and record.val_error is not None


def test_temporaries_a_killed_save_left_are_removed_when_the_fold_starts(tiny_data, tmp_path):
    """SIGKILL during a checkpoint save leaves `.checkpoint.pt.<pid>-<hex>.tmp`: the next start (holding the fold lock)
    removes it and what else such a write leaves, and nothing else."""
    out = tmp_path / "fold"
    out.mkdir()
    leftovers = [".checkpoint.pt.4242-0123abcd.tmp", ".result.json.77-deadbeef.tmp"]
    for name in leftovers:
        (out / name).write_bytes(b"half a file")
    (out / "notes.txt").write_text("mine")
    train_fold(tiny_cfg("standard", epochs=1), tiny_data, 1, out, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert not set(leftovers) & set(names) and "notes.txt" in names and "checkpoint.pt" in names


def test_a_ctrl_c_while_a_checkpoint_is_written_stays_a_ctrl_c(tmp_path, monkeypatch):
    """torch's writer turns a KeyboardInterrupt raised in a file write into a RuntimeError: save_checkpoint gives the
    KeyboardInterrupt back (a second Ctrl-C is a stop, its run KILLED, not FAILED), the old checkpoint unchanged."""
    import io

    import torch

    from intermix_core.method.checkpoint import interruption, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()
    real_open = Path.open

    class Interrupted(io.FileIO):
        writes = 0

        def write(self, b):  # the third write: a signal arrives while torch writes the archive
            Interrupted.writes += 1
            if Interrupted.writes == 3:
                raise KeyboardInterrupt
            return super().write(b)

    def opening(self, mode="r", *args, **kwargs):
        return Interrupted(str(self), "wb") if mode == "wb" else real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", opening)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(100_000)})
    monkeypatch.undo()
    assert Interrupted.writes >= 3 and path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    wrapped = RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    wrapped.__context__ = KeyboardInterrupt()
    assert interruption(wrapped) is wrapped.__context__ and interruption(ValueError("x")) is None
