"""A fold's out dir and its store prefix never drift apart: the newer checkpoint wins, the store gets what it lacks,
and a result in the store always has its checkpoint beside it. Also: saving into a full disk fails in one line.

Runs `intermix_core.steps.train_step` on the demo clips against a folder store (the same Storage
protocol as S3); outages of a real S3 server (SeaweedFS) are in test_kill_resume.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intermix_core.method.train import load_checkpoint, save_checkpoint
from intermix_core.records import CHECKPOINT, RESULT
from intermix_core.run.steps import cell_prefix, train_step
from intermix_core.store.storage import open_storage

from tiny import tiny_cfg


def _epoch(path: Path) -> int:
    return load_checkpoint(path)["epoch"]


def _train(cfg, data, out, store_root, **kw):
    return train_step(cfg.model_dump_json(), data, 1, out, "sync", None, str(store_root), sync_seconds=3600, **kw)


def test_newer_local_checkpoint_wins_and_is_pushed(tiny_data, tmp_path):
    cfg = tiny_cfg("standard", epochs=4, checkpoint_every=1)
    store = open_storage(tmp_path / "store")
    prefix = cell_prefix("sync", "esc10", "piczak_cnn", "standard", 1)
    # the store holds epoch 1 (an earlier attempt), the local folder epoch 3 (a later one, never uploaded)
    from intermix_core.method.train import train_fold

    train_fold(cfg, tiny_data, 1, tmp_path / "old", progress=False, stop_after_epoch=1)
    store.upload_file(tmp_path / "old" / CHECKPOINT, f"{prefix}/{CHECKPOINT}")
    train_fold(cfg, tiny_data, 1, tmp_path / "node", progress=False, stop_after_epoch=3)
    result = _train(cfg, tiny_data, tmp_path / "node", tmp_path / "store")
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]  # resumed from the local epoch 3, not the stored 1
    fetched = store.download_file(f"{prefix}/{CHECKPOINT}", tmp_path / "fetched.pt")
    assert _epoch(fetched) == 4 and store.exists(f"{prefix}/{RESULT}")


def test_newer_stored_checkpoint_replaces_an_older_local_one(tiny_data, tmp_path):
    cfg = tiny_cfg("standard", epochs=4, checkpoint_every=1)
    store = open_storage(tmp_path / "store")
    prefix = cell_prefix("sync", "esc10", "piczak_cnn", "standard", 1)
    from intermix_core.method.train import train_fold

    train_fold(cfg, tiny_data, 1, tmp_path / "other", progress=False, stop_after_epoch=3)
    store.upload_file(tmp_path / "other" / CHECKPOINT, f"{prefix}/{CHECKPOINT}")
    train_fold(cfg, tiny_data, 1, tmp_path / "node", progress=False, stop_after_epoch=1)
    result = _train(cfg, tiny_data, tmp_path / "node", tmp_path / "store")
    full = train_fold(cfg, tiny_data, 1, tmp_path / "uninterrupted", progress=False)
    assert result.history == full.history  # epochs 2-3 came from the store, bit-identical to one run


def test_a_finished_fold_missing_from_the_store_is_completed_there(tiny_data, tmp_path):
    """After a store outage the local folder has checkpoint and result; a rerun pushes both, result last."""
    cfg = tiny_cfg("standard", epochs=2)
    from intermix_core.method.train import train_fold

    local = train_fold(cfg, tiny_data, 1, tmp_path / "node", progress=False)
    store = open_storage(tmp_path / "store")
    prefix = cell_prefix("sync", "esc10", "piczak_cnn", "standard", 1)
    assert not store.exists(f"{prefix}/{CHECKPOINT}")
    again = _train(cfg, tiny_data, tmp_path / "node", tmp_path / "store")
    assert again == local  # not retrained
    assert store.exists(f"{prefix}/{CHECKPOINT}") and store.exists(f"{prefix}/{RESULT}")
    assert _epoch(store.download_file(f"{prefix}/{CHECKPOINT}", tmp_path / "c.pt")) == 2


def test_restart_starts_over_with_or_without_a_store(tiny_data, tmp_path, monkeypatch):
    import intermix_core.method.train as train_module

    epochs: list[int] = []
    real = train_module._train_epoch
    monkeypatch.setattr(train_module, "_train_epoch", lambda run, epoch: epochs.append(epoch) or real(run, epoch))
    cfg = tiny_cfg("standard", epochs=2)
    first = train_step(cfg.model_dump_json(), tiny_data, 1, tmp_path / "out")
    again = train_step(cfg.model_dump_json(), tiny_data, 1, tmp_path / "out")
    assert again == first and epochs == [1, 2]  # finished: not trained again
    second = train_step(cfg.model_dump_json(), tiny_data, 1, tmp_path / "out", restart=True)
    assert second.history == first.history and epochs == [1, 2, 1, 2]  # retrained from the start, same result


_FULL_DISK = """
import resource, signal, sys, torch
from pathlib import Path
from intermix_core.method.train import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)             # write() then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
save_checkpoint(Path(sys.argv[1]) / "checkpoint.pt", {"model": {"w": torch.zeros(2_000_000)}})
"""


def test_saving_into_a_full_disk_fails_in_one_line_and_leaves_no_temporary(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "checkpoint.pt: cannot save the checkpoint (File too large; is the disk full?)" in last
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor a temporary file


def test_an_existing_checkpoint_survives_a_failed_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, {"model": lambda: None})  # unpicklable: the save fails midway
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]



_HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(f"pid {os.getpid()} on here since now")
f.flush()
print("held", flush=True)
time.sleep(60)
"""


def test_from_scratch_on_a_folder_another_trainer_holds_deletes_nothing(tmp_path):
    """--from-scratch takes the fold lock before it deletes: refused, the holder's files (local and stored) all stay."""
    cfg = tiny_cfg("standard", epochs=1)
    out, store = tmp_path / "out", open_storage(tmp_path / "store")
    out.mkdir()
    prefix = cell_prefix("sync", "esc10", "piczak_cnn", "standard", 1)
    for name in (CHECKPOINT, RESULT):
        (out / name).write_bytes(b"the holder's " + name.encode())
        store.upload_file(out / name, f"{prefix}/{name}")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / ".fold.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from intermix_core.method.checkpoint import FoldBusy

        with pytest.raises(FoldBusy, match=rf"fold folder in use by pid {holder.pid}"):
            _train(cfg, "/nonexistent", out, tmp_path / "store", restart=True)
    finally:
        holder.kill()
        holder.wait()
    for name in (CHECKPOINT, RESULT):
        assert (out / name).read_bytes() == b"the holder's " + name.encode()
        assert store.exists(f"{prefix}/{name}")


def test_a_lock_file_linked_elsewhere_is_refused_and_its_target_untouched(tmp_path):
    from intermix_core.method.checkpoint import FoldBusy, fold_lock

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".fold.lock").symlink_to(target)
    with pytest.raises(FoldBusy, match=r"\.fold\.lock: a symbolic link, not the fold's lock file"):
        with fold_lock(tmp_path / "out"):
            pass
    assert target.read_text() == "keep me"
    (tmp_path / "other").mkdir()
    with fold_lock(tmp_path / "other"), fold_lock(tmp_path / "other"):  # re-entrant in one process
        pass


def _relabelled(tiny_data: Path, tmp: Path) -> Path:
    """The clips of tiny_data's source with fold 1's labels rotated by one clip: another preparation of 'esc10'."""
    import csv

    from intermix_core.data import prepare_dataset
    from intermix_core.models import model_class
    from intermix_core.testing import demo_subset

    src = demo_subset(tmp / "src", per_class_per_fold=1, folds=(1, 2), seconds=2.0)
    meta = src / "meta" / "esc50.csv"
    rows = list(csv.reader(meta.open()))
    header, body = rows[0], rows[1:]
    one = [i for i, r in enumerate(body) if r[1] == "1"]
    labels = [body[i][2:4] for i in one]
    for i, label in zip(one, labels[1:] + labels[:1]):
        body[i][2:4] = label
    with meta.open("w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    return prepare_dataset(src, "esc10", tmp / "prepared", model_class("piczak_cnn").sample_rate,
                           progress=False) and tmp / "prepared"


def test_a_fold_trained_on_other_prepared_data_is_never_resumed_attacked_or_tabled_with_it(tiny_data, tmp_path):
    """Results and checkpoints carry the prepared data's fingerprint: other clips or labels stop in one line."""
    from intermix_core.data import load_prepared
    from intermix_core.method.checkpoint import DataMismatch
    from intermix_core.method.train import train_fold
    from intermix_core.run.aggregate import MixedData, aggregate_step
    from intermix_core.run.steps import attack_step

    other = _relabelled(tiny_data, tmp_path / "other")
    first, second = (load_prepared(d, verify=False).manifest.data_fingerprint() for d in (tiny_data, other))
    assert first != second
    cfg = tiny_cfg("standard", epochs=1)
    store = open_storage(tmp_path / "store")
    prefix = cell_prefix("sync", "esc10", "piczak_cnn", "standard", 1)
    result = _train(cfg, tiny_data, tmp_path / "out", tmp_path / "store")
    assert result.data_fingerprint == first
    assert load_checkpoint(tmp_path / "out" / CHECKPOINT)["data_fingerprint"] == first
    stored = store.download_file(f"{prefix}/{RESULT}", tmp_path / "stored.json").read_bytes()
    with pytest.raises(DataMismatch, match=rf"checkpoint\.pt: trained on other prepared data \(fingerprint {first}\)"):
        _train(cfg, other, tmp_path / "out", tmp_path / "store")  # the same grid, its source changed
    assert store.download_file(f"{prefix}/{RESULT}", tmp_path / "again.json").read_bytes() == stored  # kept
    with pytest.raises(DataMismatch, match="trained on other prepared data"):
        attack_step(tmp_path / "out", other, 1, tmp_path / "attacked", "sync")
    assert not (tmp_path / "attacked").exists()
    train_fold(cfg, other, 2, tmp_path / "fold2", progress=False)  # fold 2 on the other data
    with pytest.raises(MixedData, match=r"the esc10 results were trained on 2 different preparations"):
        aggregate_step([tmp_path / "out" / RESULT, tmp_path / "fold2" / RESULT], tmp_path / "report")
    assert not (tmp_path / "report").exists()
    again = _train(cfg, other, tmp_path / "out", tmp_path / "store", restart=True)  # --from-scratch: on this data
    assert again.data_fingerprint == second


def test_leftovers_of_a_writer_killed_mid_push_are_removed_when_the_fold_starts(tiny_data, tmp_path, monkeypatch):
    """kill -9 during a push left a partial `.checkpoint.pt.tmp-*` in the store and an `intermix-push-*` folder in
    $TMPDIR, for ever: the next attempt at the fold removes both (a live process's folder stays)."""
    import tempfile
    import time

    from intermix_core.run.sync import PUSH_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / "tmp" / f"{PUSH_PREFIX}{int(gone.stdout)}-abc"
    live = tmp_path / "tmp" / f"{PUSH_PREFIX}{os.getppid()}-abc"
    for folder in (dead, live):
        folder.mkdir()
        (folder / CHECKPOINT).write_bytes(b"x" * 1000)
    prefix = cell_prefix("sync", "esc10", "piczak_cnn", "standard", 1)
    partial = tmp_path / "store" / prefix / ".checkpoint.pt.tmp-0123abcd"
    fresh = tmp_path / "store" / prefix / ".result.json.tmp-4567cdef"  # a write in progress elsewhere: young
    for path in (partial, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"y" * 1000)
    hour_ago = time.time() - 3600
    os.utime(partial, (hour_ago, hour_ago))
    _train(tiny_cfg("standard", epochs=1), tiny_data, tmp_path / "out", tmp_path / "store")
    assert not partial.exists() and fresh.exists()
    assert not dead.exists() and live.exists()
    assert sorted((tmp_path / "tmp").glob(f"{PUSH_PREFIX}*")) == [live]  # the run's own snapshots went too
