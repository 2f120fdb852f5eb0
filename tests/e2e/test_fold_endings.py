"""Every fold that ends without finishing ends in MLflow too, and says so: real `intermix train` processes against a
real MLflow server.

- a diverged loss: the fold run FAILED with the first line of the error as `intermix.error`, the parent FAILED;
- SIGTERM or SIGINT: a checkpoint after the epoch in progress, the run KILLED, one line, exit 143 / 130; the same
  command then resumes from that checkpoint, in the same run, and finishes it;
- SIGKILL: nothing can run, so the run stays RUNNING; once its heartbeat is older than STALE_AFTER, `intermix
  results` (the aggregate) says the fold was killed and its parent is KILLED; the next attempt takes it over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from intermix_core.data import demo_data_dir, prepare_dataset
from intermix_core.method.checkpoint import load_checkpoint
from intermix_core.run.aggregate import aggregate_step
from intermix_core.tracking.tags import ERROR, HEARTBEAT, STALE_AFTER
from intermix_core.tracking.tracker import Tracker

from fake_results import fr
from servers import MlflowServer

pytestmark = pytest.mark.slow  # subprocess training against a real MLflow server


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("endings") / "prepared"
    prepare_dataset(demo_data_dir(), "esc10", out, 22050, progress=False)
    return out


def train(prepared: Path, out: Path, url: str, grid: str, *sets: str, folds: tuple[int, ...] = (1,)) -> subprocess.Popen:
    """`intermix train` of PiczakCNN fold 1 (or a pack of `folds`) as a process of its own (metrics synced every 0.3 s)."""
    argv = [sys.executable, "-m", "pipelines.cli", "train", "--dataset", "esc10", "--model", "piczak_cnn",
            "--strategy", "bc", "--data", str(prepared), "--fold", *map(str, folds), "--out", str(out),
            "--tracking-uri", url,
            "--grid-id", grid, "--device", "cpu", "--set", "optim.batch_size=16", "--set", "num_crops=1",
            *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INTERMIX_MLFLOW_SYNC_SECONDS": "0.3"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def fold_run(client: MlflowClient, grid: str, timeout: float = 300.0, epoch: int = 1,
             proc: subprocess.Popen | None = None):  # noqa: ANN201
    """The fold run of `grid` once `epoch` epochs reached MLflow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, proc.communicate()[1][-2000:]
        exp = client.get_experiment_by_name("intermix")
        runs = client.search_runs([exp.experiment_id], f"tags.`intermix.grid_id` = '{grid}' and "
                                  "tags.`intermix.kind` = 'fold'") if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train_loss")) >= epoch:
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no epoch {epoch} of {grid} in MLflow")


def parent(client: MlflowClient, grid: str):  # noqa: ANN201
    exp = client.get_experiment_by_name("intermix")
    (run,) = client.search_runs([exp.experiment_id], f"tags.`intermix.grid_id` = '{grid}' and "
                                "tags.`intermix.kind` = 'parent'")
    return run


def test_a_diverged_fold_ends_failed_with_its_error(prepared: Path, tmp_path: Path, mlflow_tracking: MlflowServer):
    proc = train(prepared, tmp_path / "out", mlflow_tracking.url, "end-diverged", "optim.lr=1e30", "optim.epochs=3")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "the training loss became" in err
    client = MlflowClient(mlflow_tracking.url)
    run = fold_run(client, "end-diverged", epoch=0)
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR].startswith("TrainingDiverged: esc10/piczak_cnn/bc/fold1: the training loss became")
    assert parent(client, "end-diverged").info.status == "FAILED"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_epoch_with_a_checkpoint_and_ends_the_run_killed(
        sig: signal.Signals, prepared: Path, tmp_path: Path, mlflow_tracking: MlflowServer) -> None:
    grid, client = f"end-{sig.name.lower()}", MlflowClient(mlflow_tracking.url)
    proc = train(prepared, tmp_path / "out", mlflow_tracking.url, grid, "optim.epochs=40", "optim.eval_every=40")
    try:
        run = fold_run(client, grid, epoch=1, proc=proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("intermix:")]
    assert f"intermix: {sig.name}: stopping after this epoch, with a checkpoint" in err
    assert lines[-1].startswith(f"intermix: esc10/piczak_cnn/bc/fold1: stopped by {sig.name} after epoch ")
    assert "the same command resumes it" in lines[-1] and "Traceback" not in err
    epoch = int(lines[-1].split("after epoch ")[1].split(",")[0])
    state = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert state["epoch"] == epoch and "optimizer" in state  # resumable
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and sig.name in run.data.tags[ERROR]
    assert parent(client, grid).info.status == "KILLED"
    again = train(prepared, tmp_path / "out", mlflow_tracking.url, grid, "optim.epochs=40", "optim.eval_every=40")
    assert again.wait(timeout=900) == 0, again.stderr.read()[-2000:]
    run = client.get_run(run.info.run_id)  # the same run, resumed and finished
    assert run.info.status == "FINISHED" and parent(client, grid).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(1, 41))


def test_a_signal_checkpoints_every_fold_of_a_pack_and_the_same_command_resumes_them(
        prepared: Path, tmp_path: Path, mlflow_tracking: MlflowServer) -> None:
    grid, client = "end-pack", MlflowClient(mlflow_tracking.url)
    sets = ("optim.epochs=40", "optim.eval_every=40")
    proc = train(prepared, tmp_path / "out", mlflow_tracking.url, grid, *sets, folds=(1, 2))
    try:
        deadline = time.monotonic() + 300
        while True:  # both folds' runs have an epoch in MLflow
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            exp = client.get_experiment_by_name("intermix")
            runs = client.search_runs([exp.experiment_id], f"tags.`intermix.grid_id` = '{grid}' and "
                                      "tags.`intermix.kind` = 'fold'") if exp else []
            if len(runs) == 2 and all(client.get_metric_history(r.info.run_id, "train_loss") for r in runs):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = [line for line in err.splitlines() if line.startswith("intermix:")][-1]
    assert last.startswith("intermix: esc10/piczak_cnn/bc/folds 1,2: stopped by SIGTERM after epoch ")
    assert "with every fold's checkpoint: the same command resumes them" in last and "Traceback" not in err
    epoch = int(last.split("after epoch ")[1].split(",")[0])
    for fold in (1, 2):
        state = load_checkpoint(tmp_path / "out" / f"fold{fold}" / "checkpoint.pt")
        assert state["epoch"] == epoch and state["fold"] == fold and "optimizer" in state  # resumable
    assert all(client.get_run(r.info.run_id).info.status == "KILLED" for r in runs)
    again = train(prepared, tmp_path / "out", mlflow_tracking.url, grid, *sets, folds=(1, 2))
    assert again.wait(timeout=900) == 0, again.stderr.read()[-2000:]
    for r in runs:  # the same runs, resumed and finished
        assert client.get_run(r.info.run_id).info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == list(range(1, 41))


def test_a_killed_fold_is_recognised_by_its_stale_heartbeat(prepared: Path, tmp_path: Path,
                                                           mlflow_tracking: MlflowServer) -> None:
    grid, client = "end-sigkill", MlflowClient(mlflow_tracking.url)
    proc = train(prepared, tmp_path / "out", mlflow_tracking.url, grid, "optim.epochs=40", "optim.eval_every=40")
    try:
        run = fold_run(client, grid, epoch=1, proc=proc)
    finally:
        proc.kill()
        proc.communicate()
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nothing could end it
    states = Tracker(mlflow_tracking.url).fold_states(grid)
    assert len(states) == 1 and states[0].status == "RUNNING" and not states[0].stale
    # time passes: the heartbeat is older than STALE_AFTER (written as an old time, which is what waiting would do)
    old = int((time.time() - STALE_AFTER - 120) * 1000)
    client.set_tag(run.info.run_id, HEARTBEAT, str(old))
    (state,) = Tracker(mlflow_tracking.url).fold_states(grid)
    assert state.stale and state.describe().startswith("killed? its MLflow run has been RUNNING with no heartbeat for")
    expected = [["esc10", "piczak_cnn", "bc", 1], ["esc10", "piczak_cnn", "bc", 2]]
    done = tmp_path / "results" / "esc10" / "piczak_cnn" / "bc" / "fold2"
    done.mkdir(parents=True)
    other = fr("bc", 2, 40.0, setup="piczak_cnn").model_copy(update={"model": "piczak_cnn", "grid_id": grid})
    (done / "result.json").write_text(other.model_dump_json())  # the fold that finished
    summary = aggregate_step([tmp_path / "results"], tmp_path / "report", expected, tracking_uri=mlflow_tracking.url,
                             grid_id=grid)
    (missing,) = summary.missing
    assert missing.fold == 1 and missing.state.startswith("killed? its MLflow run has been RUNNING")
    assert parent(client, grid).info.status == "KILLED"

