"""Tracking under stress, with real parts: concurrent processes, a fresh sqlite store, MLflow stopped and restarted.

Every MLflow here is a real `mlflow server` (or a real sqlite file); outages are real: the server
process is stopped and started again on the same port. Concurrency is real: separate Python
processes released together through a file barrier.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from intermix_core.config import ExperimentConfig, OptimConfig
from intermix_core.records import EpochRecord
from intermix_core.tracking import tracker as tracker_module
from intermix_core.tracking.tracker import Tracker, TrackingError

from fake_results import cfg_for, fold_result
from servers import MlflowServer, S3Server, mlflow_server

TESTS = Path(__file__).resolve().parents[1] / "support"  # the children import the shared helpers

# One fold in its own process: wait at the barrier, then for each store (a " "-separated list of URIs, each
# opened only now: the first open of a sqlite store creates its schema) start_fold, log_epoch x3, finish_fold.
CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from fake_results import fold_result
from intermix_core.config import ExperimentConfig, OptimConfig
from intermix_core.tracking.tracker import Tracker
uris, experiment, grid, dataset, strategy, fold, error, barrier, me = sys.argv[1:10]
cfg = ExperimentConfig(dataset=dataset, model="envnet_v2", strategy=strategy, optim=OptimConfig(epochs=3))
result = fold_result(cfg, int(fold), float(error))
Path(barrier, "ready-" + me).touch()
while not Path(barrier, "go").exists():
    time.sleep(0.005)
for uri in uris.split():
    tracker = Tracker(uri, experiment=experiment)
    run_id = tracker.start_fold(cfg, int(fold), grid)
    for record in result.history:
        tracker.log_epoch(run_id, record)
    tracker.finish_fold(run_id, result)
    print(run_id)
"""


def run_together(tmp_path: Path, uris: str, experiment: str, grid: str, folds: list[tuple[str, str, int, float]],
                 timeout: float = 400.0) -> list[str]:
    """Run one CHILD per (dataset, strategy, fold, error), released at once; return their (last) run ids."""
    barrier = tmp_path / f"barrier-{uuid.uuid4().hex[:6]}"
    barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = CHILD.format(tests=str(TESTS))
    procs = [subprocess.Popen([sys.executable, "-c", code, uris, experiment, grid, d, s, str(f), str(e), str(barrier),
                               str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path)  # a sqlite store's artifacts go to ./mlruns
             for i, (d, s, f, e) in enumerate(folds)]
    deadline = time.monotonic() + timeout
    try:
        while len(list(barrier.glob("ready-*"))) < len(procs):
            failed = [p.communicate()[1][-3000:] for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline and not failed, failed
            time.sleep(0.05)
        (barrier / "go").touch()
        ids = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, err[-3000:]
            assert "Traceback" not in err
            ids.append(out.split()[-1])
        return ids
    finally:
        for p in procs:  # a failed test leaves no child waiting at the barrier
            if p.poll() is None:
                p.kill()
                p.wait()


def current_runs(tracker: Tracker, grid: str, dataset: str, strategy: str, fold: int) -> list:
    """Fold runs of one fold that count: not superseded."""
    return [r for r in tracker.fold_runs(grid, dataset, "envnet_v2", strategy, fold=fold)
            if r.data.tags.get("intermix.superseded") != "true"]


@pytest.fixture(scope="module")
def tracker(mlflow_tracking: MlflowServer) -> Tracker:
    """A Tracker on the session's MLflow server, in an experiment of its own."""
    return Tracker(mlflow_tracking.url, experiment=f"reliability-{uuid.uuid4().hex[:6]}")


# ------------------------------------------------------------------ two attempts at one fold (item 3)

def test_a_late_supersession_pass_does_not_undo_a_later_attempt(tracker: Tracker, mlflow_tracking: MlflowServer) -> None:
    """The interleaving that made each attempt supersede the other: A starts, B starts, A's pass runs again last."""
    grid, cfg = "twins-a", cfg_for("bc")
    other = Tracker(mlflow_tracking.url, experiment=tracker.client.get_experiment(tracker.experiment_id).name)
    a = tracker.start_fold(cfg, 1, grid)
    b = other.start_fold(cfg, 1, grid)
    cell = (grid, "esc10", "envnet_v2", "bc")
    assert tracker._supersede_others(a, cell, 1) is False  # a's pass, seen late: b began after a, so b stays current
    assert [r.info.run_id for r in current_runs(tracker, grid, "esc10", "bc", 1)] == [b]
    assert tracker.client.get_run(a).data.tags["intermix.superseded_by"] == b
    tracker.finish_fold(a, fold_result(cfg, 1, 30.0))  # the slow first attempt still finishes: it does not count
    other.finish_fold(b, fold_result(cfg, 1, 12.0))
    stats = tracker.update_parent(*cell)
    assert stats["n_folds"] == 1 and stats["test_error_mean"] == 12.0


def test_two_processes_training_one_fold_leave_one_current_run(tracker: Tracker, tmp_path: Path,
                                                               mlflow_tracking: MlflowServer) -> None:
    """Two processes start the same fold at the same moment: exactly one current run, exact parent statistics."""
    grid = "twins-b"
    experiment = tracker.client.get_experiment(tracker.experiment_id).name
    cfg = cfg_for("intermix")
    run_id = tracker.start_fold(cfg, 2, grid)
    tracker.finish_fold(run_id, fold_result(cfg, 2, 20.0))
    ids = run_together(tmp_path, mlflow_tracking.url, experiment, grid,
                       [("esc10", "intermix", 1, 10.0), ("esc10", "intermix", 1, 10.0)])
    runs = tracker.fold_runs(grid, "esc10", "envnet_v2", "intermix", fold=1)
    assert sorted(r.info.run_id for r in runs) == sorted(ids)
    current = current_runs(tracker, grid, "esc10", "intermix", 1)
    assert len(current) == 1 and current[0].info.status == "FINISHED"
    loser = next(r for r in runs if r.info.run_id != current[0].info.run_id)
    assert loser.data.tags["intermix.superseded_by"] == current[0].info.run_id
    parent = tracker.find_parent(grid, "esc10", "envnet_v2", "intermix")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_folds"] == 2 and parent.data.metrics["test_error_mean"] == 15.0
    assert parent.data.metrics["test_error_se"] == pytest.approx(5.0)


@pytest.mark.slow
def test_eight_concurrent_writers_give_exact_parent_statistics(tracker: Tracker, tmp_path: Path,
                                                               mlflow_tracking: MlflowServer) -> None:
    """Eight folds of one cell in eight processes at once, each to the MLflow server and to a fresh sqlite store.

    The server: exact parent statistics (n_folds 8, mean 45.0, SE 8.660254). The sqlite store did not
    exist: all eight open it at the same moment, the schema is created once, every write succeeds.
    """
    grid = "eight"
    experiment = tracker.client.get_experiment(tracker.experiment_id).name
    sqlite = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    errors = [10.0 * f for f in range(1, 9)]
    run_together(tmp_path, f"{sqlite} {mlflow_tracking.url}", experiment, grid,
                 [("urbansound8k", "bc", f, e) for f, e in zip(range(1, 9), errors)])
    parent = tracker.find_parent(grid, "urbansound8k", "envnet_v2", "bc")
    m = parent.data.metrics
    assert parent.info.status == "FINISHED" and m["n_folds"] == 8
    assert m["test_error_mean"] == pytest.approx(45.0)
    assert m["test_error_se"] == pytest.approx(statistics.stdev(errors) / math.sqrt(8)) == pytest.approx(8.660254)
    local = Tracker(sqlite, experiment=experiment)
    stats = local.update_parent(grid, "urbansound8k", "envnet_v2", "bc")
    assert stats["n_folds"] == 8 and stats["test_error_mean"] == pytest.approx(45.0)
    runs = local.fold_runs(grid, "urbansound8k", "envnet_v2", "bc")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)


# ------------------------------------------------------------------ MLflow outages (item 5)

@pytest.fixture(scope="module")
def own_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow server of this module's outage tests (stopping it must not disturb the session's)."""
    workdir = tmp_path_factory.mktemp("own-mlflow")
    with mlflow_server(workdir, s3_server, bucket="intermix-mlflow", prefix=f"own-{workdir.name}") as server:
        yield server


@pytest.fixture
def own_mlflow(own_server: MlflowServer) -> MlflowServer:
    """The module's own MLflow server, running (an earlier test may have left it stopped)."""
    own_server.start()
    return own_server


def record(epoch: int) -> EpochRecord:
    """A distinct, plausible record for `epoch`."""
    return EpochRecord(epoch=epoch, lr=0.01, train_loss=2.0 / epoch, train_error=80.0 / epoch,
                       val_error=50.0 / epoch if epoch % 2 == 0 else None)


def assert_exactly_once(t: Tracker, run_id: str, epochs: int) -> None:
    """Every epoch's metrics are in MLflow once, with the values of `record`."""
    for key in ("train_loss", "train_error", "lr"):
        history = t.client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
        assert all(m.value == pytest.approx(getattr(record(m.step), key)) for m in history), key
    assert sorted(m.step for m in t.client.get_metric_history(run_id, "val_error")) == list(range(2, epochs + 1, 2))


def test_outage_mid_fold_buffers_and_loses_nothing(own_mlflow: MlflowServer, capfd: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow stops after epoch 2 and comes back before epoch 6: training never waits, every epoch lands once."""
    monkeypatch.setattr(tracker_module, "EPOCH_RETRY", (0.5, 1.0))  # try again soon, so the next call after the restart sends
    t = Tracker(own_mlflow.url, patience=120, sync_every=0)  # synchronous: each log_epoch is one attempt
    cfg = ExperimentConfig(dataset="esc10", model="envnet_v2", strategy="bc", optim=OptimConfig(epochs=8))
    run_id = t.start_fold(cfg, 1, "outage")
    for e in (1, 2):
        t.log_epoch(run_id, record(e))
    own_mlflow.stop()
    for e in (3, 4, 5):
        start = time.monotonic()
        t.log_epoch(run_id, record(e))  # refused connections: fails fast, nothing raised
        assert time.monotonic() - start < 5.0
        time.sleep(0.6)
    assert t.pending_epochs(run_id) == [3, 4, 5]
    assert t.flush(run_id) is False  # an explicit flush while down: still buffered, still no exception
    err = capfd.readouterr().err
    assert "warning: MLflow at http://127.0.0.1" in err and "training goes on" in err and "(3..5)" in err
    own_mlflow.start()
    time.sleep(1.1)
    t.log_epoch(run_id, record(6))  # the next call sends the buffer with it
    assert t.pending_epochs(run_id) == []
    assert "reachable again" in capfd.readouterr().err
    t.log_epoch(run_id, record(7))
    t.log_epoch(run_id, record(7))  # a replayed epoch is not logged twice
    result = fold_result(cfg, 1, 12.5, epochs=8)
    t.finish_fold(run_id, result.model_copy(update={"history": [record(e) for e in range(1, 9)]}))
    assert_exactly_once(t, run_id, 8)
    assert t.client.get_run(run_id).info.status == "FINISHED"
    parent = t.find_parent("outage", "esc10", "envnet_v2", "bc")
    assert parent.info.status == "FINISHED" and parent.data.metrics["test_error_mean"] == 12.5


def test_background_sync_rides_out_an_outage_exactly_once(own_mlflow: MlflowServer, capfd: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The default: epoch metrics sent by the background thread. MLflow stops after epoch 2 and comes back: the
    training thread never waits (log_epoch returns at once), the thread warns, retries and delivers every epoch once."""
    monkeypatch.setattr(tracker_module, "EPOCH_RETRY", (0.5, 1.0))
    t = Tracker(own_mlflow.url, patience=120, sync_every=0.2)
    cfg = ExperimentConfig(dataset="esc10", model="envnet_v2", strategy="bc", optim=OptimConfig(epochs=8))
    run_id = t.start_fold(cfg, 1, "bg-outage")

    def drained(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while t.pending_epochs(run_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not t.pending_epochs(run_id)

    for e in (1, 2):
        t.log_epoch(run_id, record(e))
    assert drained(10)
    own_mlflow.stop()
    for e in (3, 4, 5):
        start = time.monotonic()
        t.log_epoch(run_id, record(e))
        assert time.monotonic() - start < 0.05  # never a request on the training path
    time.sleep(1.5)
    assert t.pending_epochs(run_id) == [3, 4, 5]
    assert "training goes on" in capfd.readouterr().err
    own_mlflow.start()
    assert drained(30)
    assert "reachable again" in capfd.readouterr().err
    for e in (6, 7, 8):
        t.log_epoch(run_id, record(e))
    result = fold_result(cfg, 1, 12.5, epochs=8)
    t.finish_fold(run_id, result.model_copy(update={"history": [record(e) for e in range(1, 9)]}))
    assert_exactly_once(t, run_id, 8)
    t.close()


def test_finish_waits_for_mlflow_then_fails_in_one_line(own_mlflow: MlflowServer, capfd: pytest.CaptureFixture) -> None:
    """MLflow down at the end: finish_fold retries for `patience`, then TrackingError, one line; a later call finishes."""
    t = Tracker(own_mlflow.url, patience=3)
    cfg = ExperimentConfig(dataset="esc10", model="envnet_v2", strategy="bc", optim=OptimConfig(epochs=3))
    run_id = t.start_fold(cfg, 2, "left-down")
    t.log_epoch(run_id, record(1))
    own_mlflow.stop()
    result = fold_result(cfg, 2, 20.0).model_copy(update={"history": [record(e) for e in (1, 2, 3)]})
    start = time.monotonic()
    with pytest.raises(TrackingError) as info:
        t.finish_fold(run_id, result)
    assert 3 <= time.monotonic() - start < 30
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert message.startswith(f"MLflow at {own_mlflow.url} did not answer for 3 s (Connection refused)")
    assert f"esc10/envnet_v2/bc/fold2 is trained but its MLflow run {run_id} is not finished" in message
    assert "retrying for up to 3 s" in capfd.readouterr().err
    own_mlflow.start()  # back: the same call again completes the run, and logs each epoch once
    t.finish_fold(run_id, result)
    t.finish_fold(run_id, result)  # finishing twice adds nothing
    assert_exactly_once(t, run_id, 3)
    assert t.client.get_run(run_id).info.status == "FINISHED"
    assert [m.value for m in t.client.get_metric_history(run_id, "test_error")] == [20.0]


# ------------------------------------------------------------------ the same through `intermix train`

@pytest.fixture(scope="module")
def demo_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo subset prepared for PiczakCNN (22.05 kHz)."""
    from intermix_core.data import demo_data_dir, prepare_dataset

    out = tmp_path_factory.mktemp("demo") / "prepared"
    prepare_dataset(demo_data_dir(), "esc10", out, 22050, progress=False)
    return out


EPOCHS = 8


@contextlib.contextmanager
def train_in_background(data: Path, out: Path, url: str, grid: str, patience: float, *extra: str,
                        env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """`intermix train` of a tiny PiczakCNN fold as a separate process, logging to `url` (killed if still running at exit)."""
    sets = [f"optim.epochs={EPOCHS}", "optim.batch_size=16", "optim.eval_every=2", "optim.checkpoint_every=2",
            "num_crops=1", "attack.epsilons=[0.01]"]
    argv = [sys.executable, "-m", "pipelines.cli", "train", "--dataset", "esc10", "--model", "piczak_cnn",
            "--strategy", "bc", *[a for s in sets for a in ("--set", s)], "--data", str(data), "--fold", "1",
            "--out", str(out), "--tracking-uri", url, "--grid-id", grid, "--device", "cpu", *extra]
    env = {**os.environ, **(env or {}), "INTERMIX_MLFLOW_PATIENCE": str(patience), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for_epoch(url: str, grid: str, epoch: int, proc: subprocess.Popen, timeout: float = 300.0) -> str:
    """Poll MLflow until the fold run of `grid` has train_loss at `epoch`; return the run id."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        exp = client.get_experiment_by_name("intermix")
        runs = client.search_runs([exp.experiment_id], f"tags.`intermix.grid_id` = '{grid}'") if exp else []
        for run in runs:
            if run.data.tags.get("intermix.kind") == "fold" and run.data.metrics.get("train_loss") is not None:
                if max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) >= epoch:
                    return run.info.run_id
        time.sleep(0.2)
    raise AssertionError(f"epoch {epoch} never reached MLflow")


@pytest.mark.slow
def test_train_rides_out_mlflow_stopped_and_restarted_mid_fold(own_mlflow: MlflowServer, demo_prepared: Path,
                                                               s3_server: S3Server, tmp_path: Path) -> None:
    """`intermix train` with MLflow stopped after epoch 2 for about 30 s: exit 0, every epoch once, nothing RUNNING.

    The fold also syncs with an S3 store, with AWS keys in its environment: none of them reaches MLflow,
    the output or the result.
    """
    from mlflow import MlflowClient

    store = f"s3://intermix-data/outage-{tmp_path.name}"
    with train_in_background(demo_prepared, tmp_path / "out", own_mlflow.url, "cli-restart", 240, "--store", store,
                             env=s3_server.env()) as proc:
        run_id = wait_for_epoch(own_mlflow.url, "cli-restart", 2, proc)
        own_mlflow.stop()
        down = time.monotonic()
        time.sleep(20.0)  # epochs train while MLflow is down; with the restart, the outage lasts about 30 s
        own_mlflow.start()
        print(f"MLflow was down {time.monotonic() - down:.0f} s")
        out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "warning: MLflow at " in err and "Traceback" not in err
    client = MlflowClient(own_mlflow.url)
    for key in ("train_loss", "train_error", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, EPOCHS + 1)), key
    exp = client.get_experiment_by_name("intermix")
    runs = client.search_runs([exp.experiment_id], "tags.`intermix.grid_id` = 'cli-restart'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # the fold and its parent
    logged = " ".join(str(r.data.params) + str(r.data.tags) for r in runs)
    logged += Path(client.download_artifacts(run_id, "config.json", str(tmp_path))).read_text()
    for secret in (s3_server.secret_key, s3_server.access_key):
        assert secret not in out + err and secret not in logged
        assert secret not in (tmp_path / "out" / "result.json").read_text()


@pytest.mark.slow
def test_train_with_mlflow_left_down_ends_in_one_line_and_keeps_the_trained_fold(own_mlflow: MlflowServer,
                                                                           demo_prepared: Path, tmp_path: Path) -> None:
    """MLflow stopped mid-fold for good: training completes and ends in one error line, the trained fold stays on disk.

    The fold counts as done only once tracking knows it: result.json waits, the final checkpoint (model
    and history) is kept. Run again once MLflow is back, the same command trains nothing, logs what
    MLflow lacks (every epoch once), finishes the run and writes result.json.
    """
    from mlflow import MlflowClient

    from intermix_core.method.train import load_checkpoint
    from intermix_core.records import load_result

    out = tmp_path / "out"
    with train_in_background(demo_prepared, out, own_mlflow.url, "cli-down", 5) as proc:
        run_id = wait_for_epoch(own_mlflow.url, "cli-down", 2, proc)
        own_mlflow.stop()
        _, err = proc.communicate(timeout=400)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("intermix: error:")]
    assert len(errors) == 1, err[-3000:]
    assert errors[0] == (f"intermix: error: MLflow at {own_mlflow.url} did not answer for 5 s (Connection refused); "
                         f"esc10/piczak_cnn/bc/fold1 is trained but its MLflow run {run_id} is not finished: "
                         "run the same command again once MLflow answers to log it")
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == EPOCHS and len(state["history"]) == EPOCHS and state["run_id"] == run_id

    own_mlflow.start()
    with train_in_background(demo_prepared, out, own_mlflow.url, "cli-down", 5) as proc:
        _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    result = load_result(out / "result.json")
    assert result.status == "ok" and result.test_error is not None and len(result.history) == EPOCHS
    assert result.train_seconds == pytest.approx(state["elapsed"], abs=1e-3)  # not trained again
    client = MlflowClient(own_mlflow.url)
    for key in ("train_loss", "train_error", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, EPOCHS + 1)), key
    exp = client.get_experiment_by_name("intermix")
    runs = client.search_runs([exp.experiment_id], "tags.`intermix.grid_id` = 'cli-down'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # the fold and its parent
