"""Tracking of a synthetic grid against a real MLflow server (artifacts on SeaweedFS) and the local default store."""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from pathlib import Path

import pytest

from intermix_core.tracking.tracker import Tracker, summarize

from fake_results import TEST_ERROR, cfg_for, fgsm_for, fold_result, run_fold, search
from servers import MlflowServer, S3Server


@pytest.fixture(scope="module")
def server_tracker(mlflow_tracking: MlflowServer) -> Tracker:
    """A Tracker on the MLflow server, in an experiment of its own."""
    return Tracker(mlflow_tracking.url, experiment=f"tests-{uuid.uuid4().hex[:6]}")


def test_grid_structure_params_metrics_artifacts(server_tracker: Tracker, s3_server: S3Server) -> None:
    t, grid = server_tracker, "grid-a"
    fold_ids = {(s, f): run_fold(t, s, f, grid, err, fgsm=fgsm_for(err)) for (s, f), err in TEST_ERROR.items()}

    parents = search(t, "tags.`intermix.kind` = 'parent' and tags.`intermix.grid_id` = 'grid-a'")
    assert sorted(p.info.run_name for p in parents) == ["esc10/envnet_v2/bc", "esc10/envnet_v2/intermix"]
    for parent in parents:
        strategy = parent.data.tags["intermix.strategy"]
        assert parent.info.status == "FINISHED"
        children = search(t, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted(c.info.run_name for c in children) == [f"esc10/envnet_v2/{strategy}/fold{f}" for f in (1, 2, 3)]
        errs = [TEST_ERROR[(strategy, f)] for f in (1, 2, 3)]
        m = parent.data.metrics
        assert m["n_folds"] == 3
        assert m["test_error_mean"] == pytest.approx(sum(errs) / 3)
        assert m["test_error_se"] == pytest.approx(statistics.stdev(errs) / math.sqrt(3))
        assert m["fgsm_error_eps_0.01_mean"] == pytest.approx(sum(errs) / 3 + 50.0)
        assert m["fgsm_error_eps_1e-05_se"] == pytest.approx(statistics.stdev(errs) / math.sqrt(3))
        assert t.update_parent(grid, "esc10", "envnet_v2", strategy)["test_error_mean"] == pytest.approx(sum(errs) / 3)

    run = t.client.get_run(fold_ids[("intermix", 2)])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert (tags["intermix.kind"], tags["intermix.fold"], tags["intermix.superseded"]) == ("fold", "2", "false")
    assert tags["intermix.demo"] == "tests" and tags["intermix.grid_id"] == grid
    assert params["strategy.name"] == "intermix" and params["optim.epochs"] == "3" and params["fold"] == "2"
    assert params == {**cfg_for("intermix").flat(), "fold": "2"}
    assert metrics["test_error"] == 11.25 and metrics["fgsm_error_eps_0.001"] == 31.25
    assert metrics["train_seconds"] == 12.5 and metrics["samples_per_second"] == 9.6
    history = t.client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(h.step for h in history) == [1, 2, 3]
    assert [h.step for h in t.client.get_metric_history(run.info.run_id, "val_error")] == [3]

    names = {a.path for a in t.client.list_artifacts(run.info.run_id)}
    assert {"config.json", "confusion.json", "confusion.png"} <= names
    local = Path(t.client.download_artifacts(run.info.run_id, "config.json"))
    assert json.loads(local.read_text()) == cfg_for("intermix").resolved().model_dump(mode="json")
    confusion = json.loads(Path(t.client.download_artifacts(run.info.run_id, "confusion.json")).read_text())
    assert sum(map(sum, confusion["matrix"])) == 40

    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket="intermix-mlflow", Prefix="mlflow/") for o in page.get("Contents", [])]
    for run_id in fold_ids.values():  # artifacts really landed on SeaweedFS, behind the server's proxy
        assert any(k.endswith(f"{run_id}/artifacts/confusion.png") for k in keys)
        assert any(k.endswith(f"{run_id}/artifacts/config.json") for k in keys)


def test_rerun_supersedes_first_attempt(server_tracker: Tracker) -> None:
    t, grid = server_tracker, "grid-b"
    first = {f: run_fold(t, "intermix", f, grid, e) for f, e in ((1, 9.5), (2, 20.0), (3, 8.0))}
    parent = t.find_parent(grid, "esc10", "envnet_v2", "intermix")
    assert parent.data.metrics["test_error_mean"] == pytest.approx((9.5 + 20.0 + 8.0) / 3)

    cfg = cfg_for("intermix")
    rerun = t.start_fold(cfg, 2, grid)
    old = t.client.get_run(first[2])
    assert old.data.tags["intermix.superseded"] == "true" and old.data.tags["intermix.superseded_by"] == rerun
    assert old.info.status == "FINISHED"  # the first attempt stays visible, as it was
    parent = t.find_parent(grid, "esc10", "envnet_v2", "intermix")
    assert parent.data.metrics["n_folds"] == 2 and parent.info.status == "RUNNING"

    t.finish_fold(rerun, fold_result(cfg, 2, 11.0))
    stats = t.update_parent(grid, "esc10", "envnet_v2", "intermix")
    assert stats["n_folds"] == 3
    assert stats["test_error_mean"] == pytest.approx((9.5 + 11.0 + 8.0) / 3)
    assert stats["test_error_se"] == pytest.approx(statistics.stdev([9.5, 11.0, 8.0]) / math.sqrt(3))
    parent = t.find_parent(grid, "esc10", "envnet_v2", "intermix")
    assert parent.data.metrics["test_error_mean"] == pytest.approx(stats["test_error_mean"])
    assert parent.info.status == "FINISHED"
    attempts = t.fold_runs(grid, "esc10", "envnet_v2", "intermix", fold=2)
    assert [r.info.run_id for r in attempts] == [first[2], rerun]


def test_resume_keeps_run_and_does_not_duplicate_epochs(server_tracker: Tracker, mlflow_tracking: MlflowServer) -> None:
    t, grid, cfg = server_tracker, "grid-c", cfg_for("bc")
    run_id = t.start_fold(cfg, 1, grid)
    result = fold_result(cfg, 1, 14.0, epochs=4)
    for record in result.history[:2]:
        t.log_epoch(run_id, record)

    fresh = Tracker(mlflow_tracking.url, experiment=t.client.get_experiment(t.experiment_id).name)  # a new process
    assert fresh.start_fold(cfg, 1, grid, resume_run_id=run_id) == run_id
    for record in result.history:  # the loop may replay epochs logged before the interruption
        fresh.log_epoch(run_id, record)
    fresh.finish_fold(run_id, result)
    for key in ("train_loss", "train_error", "lr"):
        assert sorted(m.step for m in t.client.get_metric_history(run_id, key)) == [1, 2, 3, 4]
    assert len(t.fold_runs(grid, "esc10", "envnet_v2", "bc", fold=1)) == 1
    assert t.client.get_run(run_id).info.status == "FINISHED"

    with pytest.raises(ValueError, match="not a run of this fold"):
        fresh.start_fold(cfg, 2, grid, resume_run_id=run_id)
    new_id = fresh.start_fold(cfg, 2, grid, resume_run_id="0" * 32)  # gone: a new run is created
    assert new_id != run_id


def test_failed_fold_and_separate_attack_step(server_tracker: Tracker) -> None:
    t, grid, cfg = server_tracker, "grid-d", cfg_for("bc")
    ok = run_fold(t, "bc", 1, grid, 13.0)
    failed = run_fold(t, "bc", 2, grid, None, status="failed", error="CUDA out of memory")
    run = t.client.get_run(failed)
    assert run.info.status == "FAILED" and run.data.tags["intermix.error"] == "CUDA out of memory"
    t.log_fgsm(ok, {"0.01": 70.0})
    parent = t.find_parent(grid, "esc10", "envnet_v2", "bc").data.metrics
    assert parent["n_folds"] == 1 and parent["test_error_mean"] == 13.0 and math.isnan(parent["test_error_se"])
    assert parent["fgsm_error_eps_0.01_mean"] == 70.0
    assert cfg.setup_name == "envnet_v2"


def test_local_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = Tracker()
    assert t.tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ids = [run_fold(t, "intermix", f, "local", e) for f, e in ((1, 9.0), (2, 12.0))]
    stats = t.update_parent("local", "esc10", "envnet_v2", "intermix")
    assert stats["test_error_mean"] == 10.5 and stats["test_error_se"] == pytest.approx(1.5)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    assert list((tmp_path / "mlruns").rglob(f"{ids[0]}/artifacts/confusion.png"))


def test_summarize_by_hand() -> None:
    stats = summarize([{"test_error": 10.0, "fgsm_error_eps_0.1": 50.0}, {"test_error": 14.0}, {"test_error": 12.0}])
    assert stats == {"n_folds": 3.0, "test_error_mean": 12.0, "test_error_se": pytest.approx(2.0 / math.sqrt(3)),
                     "fgsm_error_eps_0.1_mean": 50.0, "fgsm_error_eps_0.1_se": pytest.approx(float("nan"), nan_ok=True)}


# ------------------------------------------------------------------ off the training path (a local sqlite store)


def _metric_steps(t: Tracker, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(m.step for m in t.client.get_metric_history(run_id, key))


def test_epoch_metrics_go_out_in_the_background_exactly_once(tmp_path: Path) -> None:
    """log_epoch returns at once; the background thread sends the buffer every sync_every seconds, a flush sends it
    now, and finish_fold sends what is left: every epoch once, however the sends interleave."""
    from fake_results import cfg_for, fold_result

    t = Tracker(f"sqlite:///{tmp_path}/m.db", sync_every=0.3)
    cfg = cfg_for("bc")
    run_id = t.start_fold(cfg, 1, "background")
    result = fold_result(cfg, 1, 12.5, epochs=9)
    for record in result.history[:3]:
        t.log_epoch(run_id, record)
    assert t.pending_epochs(run_id) == [1, 2, 3] and _metric_steps(t, run_id) == []  # nothing sent by log_epoch
    deadline = time.monotonic() + 10
    while t.pending_epochs(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric_steps(t, run_id) == [1, 2, 3]  # the thread sent them
    for record in result.history[3:6]:
        t.log_epoch(run_id, record)
    t.log_epoch(run_id, result.history[4])  # a replayed epoch is not buffered twice
    assert t.flush(run_id) and _metric_steps(t, run_id) == [1, 2, 3, 4, 5, 6]
    for record in result.history[6:]:
        t.log_epoch(run_id, record)
    t.finish_fold(run_id, result)
    for key in ("train_loss", "train_error", "lr"):
        assert _metric_steps(t, run_id, key) == list(range(1, 10)), key
    assert t.client.get_run(run_id).info.status == "FINISHED"
    t.close()


def test_a_superseded_attempt_stops_within_one_interval_and_sends_nothing_more(tmp_path: Path) -> None:
    """Attempt A holds the run; attempt B reopens it (a retry resuming from the stored checkpoint). Within one
    sync interval A's ensure_current raises FoldSuperseded, without a request of its own; what A buffers after
    that never reaches the run, and A cannot finish it."""
    from fake_results import cfg_for, fold_result

    from intermix_core.tracking.tracker import FoldSuperseded

    uri = f"sqlite:///{tmp_path}/m.db"
    a, b = Tracker(uri, sync_every=0.2), Tracker(uri, sync_every=0.2)
    cfg = cfg_for("bc")
    result = fold_result(cfg, 1, 12.5, epochs=6)
    run_id = a.start_fold(cfg, 1, "takeover")
    for record in result.history[:2]:
        a.log_epoch(run_id, record)
    assert a.flush(run_id)
    a.ensure_current(run_id)  # still A's
    assert b.start_fold(cfg, 1, "takeover", resume_run_id=run_id) == run_id
    taken = time.monotonic()
    while time.monotonic() - taken < 5:
        try:
            a.ensure_current(run_id)
        except FoldSuperseded as err:
            assert "reopened by another attempt" in str(err)
            break
        time.sleep(0.02)
    else:
        raise AssertionError("A never noticed the takeover")
    assert time.monotonic() - taken < 2 * 0.2 + 1.0  # one interval, plus a request's time
    a.log_epoch(run_id, result.history[2])  # A's epoch 3 arrives late: dropped
    assert not a.pending_epochs(run_id)
    with pytest.raises(FoldSuperseded):
        a.finish_fold(run_id, result)
    for record in result.history[2:]:
        b.log_epoch(run_id, record)
    b.finish_fold(run_id, result)
    history = b.client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 7))
    assert b.client.get_run(run_id).info.status == "FINISHED"
    a.close()
    b.close()


def test_synchronous_mode_sends_at_every_epoch(tmp_path: Path) -> None:
    """sync_every=0 (what benchmarks/bench_overhead.py measures as the per-epoch cadence): no buffer, no thread."""
    from fake_results import cfg_for, fold_result

    t = Tracker(f"sqlite:///{tmp_path}/m.db", sync_every=0)
    cfg = cfg_for("standard")
    run_id = t.start_fold(cfg, 2, "sync")
    t.log_epoch(run_id, fold_result(cfg, 2, 10.0).history[0])
    assert t.pending_epochs(run_id) == [] and _metric_steps(t, run_id) == [1] and t._thread is None


def test_a_run_mlflow_no_longer_has_ends_the_fold_in_one_line_that_says_rerunning_recovers(tmp_path: Path) -> None:
    """MLflow restarted with an empty database mid-fold: finishing the fold's run gave a RestException traceback."""
    from intermix_core.tracking.client import TrackingError

    t = Tracker(f"sqlite:///{tmp_path}/m.db")
    try:
        with pytest.raises(TrackingError, match=r"no longer has run 0123456789abcdef0123456789abcdef \(restarted with "
                                                r"an empty database\?\); esc10/envnet_v2/bc/fold1 is trained and kept "
                                                r"in its folder: run the same command again to log it in a new run"):
            t.finish_fold("0123456789abcdef0123456789abcdef", fold_result(cfg_for("bc"), 1, 20.0))
    finally:
        t.close()


_SLOW_TRAINER = """
import sys, time
real = time.time
time.time = lambda: real() - 1200  # this machine's clock is 20 min slow (the whole process sees it, MLflow too)
from intermix_core.tracking.tracker import Tracker
sys.path.insert(0, sys.argv[3])
from fake_results import cfg_for
t = Tracker(sys.argv[1])
run_id = t.start_fold(cfg_for("bc"), 1, sys.argv[2])
t.heartbeat(run_id)
print(run_id)
"""


def test_a_trainer_whose_clock_is_20_min_slow_is_running_not_killed(mlflow_tracking: MlflowServer, tmp_path: Path):
    """Heartbeats were the writer's wall clock: `status` on a correct clock called a live trainer whose clock is 20
    min slow "killed ... (the process is gone)" and offered a rerun. Both sides now use the MLflow server's clock."""
    import os
    import subprocess
    import sys

    from intermix_core.config.grid import grid_id, parse_grid
    from intermix_core.run.status import format_status, grid_status
    from intermix_core.tracking.client import server_clock_offset

    assert server_clock_offset(mlflow_tracking.url) == 0.0  # this machine and the server agree
    grid = parse_grid({"datasets": ["esc10"], "setups": ["envnet_v2"], "strategies": ["bc"], "folds": [1]}, source="t")
    gid = grid_id(grid)
    support = str(Path(__file__).resolve().parents[2] / "support")
    proc = subprocess.run([sys.executable, "-c", _SLOW_TRAINER, mlflow_tracking.url, gid, support], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = grid_status(grid, str(tmp_path / "store"), mlflow_tracking.url)
    (fold,) = status.folds
    assert fold.state == "running", format_status(status)
    assert fold.heartbeat is not None and abs(time.time() - fold.heartbeat) < 120  # "last heartbeat 3 s ago"
    t = Tracker(mlflow_tracking.url)
    try:
        (state,) = t.fold_states(gid)
        assert not state.stale and state.describe().startswith("running")
    finally:
        t.close()


def test_two_folds_setting_their_parents_new_tag_at_once_is_retried_not_failed(tmp_path: Path, capsys) -> None:
    """MLflow's SQL store reads, then inserts a tag: two folds of a cell finishing together both insert the parent's
    `intermix.folds`, and the second breaks the unique key (seen in a demo run on sqlite). The patient client retries
    that at once and silently; a real sqlite store answers the retry as an update. The race itself is forced here
    by a double that raises MLflow's own exception once (named so: two processes cannot be made to collide on cue)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from intermix_core.tracking.client import PatientClient, insert_race, transient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("race")).info.run_id
    collided = MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid",
                               error_code="BAD_REQUEST")
    assert insert_race(collided) and transient(collided)
    assert not insert_race(MlflowException("Changing param values is not allowed", error_code="INVALID_PARAMETER_VALUE"))
    calls = []

    def set_tag_after_a_collision(*args: object) -> None:  # double: the first call loses the race
        calls.append(args)
        if len(calls) == 1:
            raise collided
        client.set_tag(*args)

    PatientClient(client, "sqlite:///race", patience=10).call(set_tag_after_a_collision, run, "intermix.folds", "1,2")
    assert len(calls) == 2 and client.get_run(run).data.tags["intermix.folds"] == "1,2"
    assert "unreachable" not in capsys.readouterr().err
