"""Every end of a train step is recorded in MLflow as what it is, against a real MLflow (a sqlite store) and a
folder store: a signal while the fold's run starts or finishes, and a trained fold that the store refuses.

The signals are sent by the test process to itself at the named moment (inside the real Tracker call), as a
pod's SIGTERM can arrive while MLflow is slow; the store failure is real (a directory where result.json goes).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from intermix_core.method.train import FoldInterrupted
from intermix_core.records import CHECKPOINT, RESULT, load_result
from intermix_core.run.steps import cell_prefix, train_step
from intermix_core.store.storage import StorageError, open_storage
from intermix_core.tracking.tags import ERROR
from intermix_core.tracking.tracker import Tracker

from tiny import tiny_cfg

CELL = ("esc10", "piczak_cnn", "standard")


def _step(tmp: Path, grid: str, **kw):  # noqa: ANN202
    return train_step(tiny_cfg("standard", epochs=1).model_dump_json(), kw.pop("data"), 1, tmp / "out", grid,
                      f"sqlite:///{tmp}/m.db", str(tmp / "store"), sync_seconds=3600, **kw)


def _runs(tmp: Path, grid: str):  # noqa: ANN202
    """(the fold's run, its parent), read back from MLflow."""
    tracker = Tracker(f"sqlite:///{tmp}/m.db")
    try:
        (run,) = tracker.fold_runs(grid, *CELL, 1)
        return run, tracker.find_parent(grid, *CELL)
    finally:
        tracker.close()


def test_a_signal_while_the_fold_run_starts_ends_it_killed(tiny_data, tmp_path, monkeypatch):
    real = Tracker.start_fold

    def start_then_sigterm(self, *args, **kwargs):  # noqa: ANN001, ANN202 - SIGTERM lands during the MLflow call
        run_id = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return run_id

    monkeypatch.setattr(Tracker, "start_fold", start_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(FoldInterrupted, match=r"stopped by SIGTERM before epoch 1: the same command starts it"):
        _step(tmp_path, "sig-start", data=tiny_data)
    assert signal.getsignal(signal.SIGTERM) is before
    run, parent = _runs(tmp_path, "sig-start")
    assert run.info.status == "KILLED" and "stopped by SIGTERM" in run.data.tags[ERROR]
    assert parent.info.status == "KILLED"
    assert not (tmp_path / "out" / CHECKPOINT).exists()


def test_a_signal_while_the_fold_finishes_lets_it_finish_and_store_its_result(tiny_data, tmp_path, monkeypatch):
    real = Tracker.finish_fold

    def sigterm_then_finish(self, *args, **kwargs):  # noqa: ANN001, ANN202
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "finish_fold", sigterm_then_finish)
    result = _step(tmp_path, "sig-finish", data=tiny_data)
    run, parent = _runs(tmp_path, "sig-finish")
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    stored = open_storage(tmp_path / "store").download_file(f"{cell_prefix('sig-finish', *CELL, 1)}/{RESULT}",
                                                           tmp_path / "stored.json")
    assert load_result(stored) == result and result.test_error is not None


def test_a_fold_the_store_refuses_ends_its_run_failed_and_the_same_command_stores_it(tiny_data, tmp_path):
    """The run's status says what the store holds: FAILED while the store holds no result, FINISHED once it does."""
    blocked = tmp_path / "store" / cell_prefix("store-fails", *CELL, 1) / RESULT
    blocked.mkdir(parents=True)  # the store cannot write result.json there (as a full or read-only store)
    with pytest.raises(StorageError, match=r"result\.json: cannot write"):
        _step(tmp_path, "store-fails", data=tiny_data)
    run, parent = _runs(tmp_path, "store-fails")
    assert run.info.status == "FAILED" and parent.info.status == "FAILED"
    assert run.data.tags[ERROR].startswith("trained, but not stored in ")
    assert "the same command stores it and finishes this run" in run.data.tags[ERROR]
    blocked.rmdir()
    again = _step(tmp_path, "store-fails", data=tiny_data)
    run, parent = _runs(tmp_path, "store-fails")
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED" and ERROR not in run.data.tags
    assert load_result(open_storage(tmp_path / "store").download_file(
        f"{cell_prefix('store-fails', *CELL, 1)}/{RESULT}", tmp_path / "r.json")) == again


def test_from_scratch_on_another_node_leaves_a_live_attempts_stored_files(tiny_data, tmp_path):
    """The fold lock guards one folder; the store prefix is every node's. `--from-scratch` on another node while an
    attempt trains the fold (its MLflow run RUNNING, heartbeat fresh) deletes nothing; once that attempt ended, it
    trains the fold again."""
    from intermix_core.method.checkpoint import FoldBusy

    cfg = tiny_cfg("standard", epochs=1)
    store = open_storage(tmp_path / "store")
    prefix = cell_prefix("claim", *CELL, 1)
    (tmp_path / "theirs.json").write_text("{}")
    store.upload_file(tmp_path / "theirs.json", f"{prefix}/{RESULT}")
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    try:
        live = tracker.start_fold(cfg, 1, "claim")  # the attempt training on another node
        with pytest.raises(FoldBusy, match=rf"another attempt is training it \(MLflow run {live}, RUNNING"):
            _step(tmp_path, "claim", data=tiny_data, restart=True)
        assert store.exists(f"{prefix}/{RESULT}")
        tracker.end_fold(live, "KILLED", "stopped by SIGTERM")
    finally:
        tracker.close()
    assert _step(tmp_path, "claim", data=tiny_data, restart=True).test_error is not None
