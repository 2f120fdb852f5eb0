"""Ctrl-C and SIGTERM stop `intermix run`: real `intermix run` processes of a tiny grid on KFP's local runner with
its local MLflow store, under the plain-AVX2 imitation (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2).

- `precision: auto` runs as float32 there, said in one line by the command and by each fold;
- one signal to the command's process group (what a terminal's Ctrl-C sends): the running folds stop after their
  epoch with a checkpoint, the waiting fold never starts, nothing is retried, the command exits 128 + the signal with
  one line naming the command that resumes, no traceback, no process left, every MLflow run KILLED and none FAILED;
  the same command then finishes every fold;
- two signals: the folds stop at once; the same ending, no traceback, no process left, nothing FAILED.
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

pytestmark = pytest.mark.slow  # KFP's local runner trains real folds in subprocesses

GRID = """\
name: signals
seed: 0
datasets: [esc10]
setups: [{name: piczak_cnn, model: piczak_cnn}]
strategies: [standard]
folds: [1, 2, 3]
sources: {esc10: demo}
overrides:
  optim: {epochs: 12, eval_every: 12, batch_size: 16, precision: auto}
  attack: {epsilons: [0.001]}
  num_crops: 2
"""
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def start(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[str]]:
    """`intermix run` of the tiny grid in a process group of its own (as a shell's foreground job)."""
    grid, work = tmp_path / "signals.yaml", tmp_path / "work"
    grid.write_text(GRID)
    argv = [sys.executable, "-m", "pipelines.cli", "run", str(grid), "--workdir", str(work), "--no-progress"]
    env = {**os.environ, **AVX2, "OMP_NUM_THREADS": "1", "INTERMIX_MLFLOW_SYNC_SECONDS": "0.3"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    return proc, work, argv


def logs(work: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((work / "logs").glob("*.log")))


def wait_for_training(proc: subprocess.Popen, work: Path, timeout: float = 400.0) -> None:
    """Until both running folds trained an epoch (their MLflow metric is there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if logs(work).count("precision auto -> fp32") >= 2 and len(fold_runs(work, with_epoch=True)) >= 2:
            return
        time.sleep(0.5)
    pytest.fail("the folds did not start training in time")


def fold_runs(work: Path, with_epoch: bool = False) -> dict[str, str]:
    """Every MLflow run of the work directory's grid: run name -> status (fold runs with an epoch only, if asked)."""
    db = work / "mlflow.db"
    if not db.exists():
        return {}
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("intermix")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return {r.data.tags.get("mlflow.runName", r.info.run_id): r.info.status for r in runs
            if not with_epoch or ("train_loss" in r.data.metrics and r.data.tags.get("intermix.kind") == "fold")}


def run_errors(work: Path) -> dict[str, str]:
    """Each ended MLflow run's `intermix.error` tag (why it ended): what a failed assertion shows."""
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("intermix")
    return {r.data.tags.get("mlflow.runName", r.info.run_id): r.data.tags.get("intermix.error", "")
            for r in (client.search_runs([exp.experiment_id]) if exp else [])}


def survivors(work: Path) -> list[str]:
    """Processes (other than this one) whose command line names the work directory: the run's tasks."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(work) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def stop(proc: subprocess.Popen, signals: list[int], gap: float = 1.0) -> tuple[int, str]:
    """Send each signal to the command's process group, `gap` seconds apart; its exit code and stderr."""
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_one_signal_stops_after_the_epoch_and_the_same_command_resumes(tmp_path: Path, sig: int) -> None:
    proc, work, argv = start(tmp_path)
    wait_for_training(proc, work)
    code, err = stop(proc, [sig])
    assert code == 128 + sig, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"intermix: stopped by {signal.Signals(sig).name}: ") and "the same command resumes: " in last
    assert "intermix: precision auto -> fp32: ONEDNN_MAX_CPU_ISA=AVX2" in err  # the command's one line
    assert "Traceback" not in err and "Retrying" not in err + logs(work)
    assert survivors(work) == []
    runs = fold_runs(work)
    folds = {name: status for name, status in runs.items() if name.endswith(("fold1", "fold2", "fold3"))}
    assert len(folds) == 2 and set(runs.values()) == {"KILLED"}, runs  # the third fold never started; none FAILED
    checkpoints = list((work / "store").rglob("checkpoint.pt"))
    assert len(checkpoints) == 2  # each stopped fold's, in the store: what the same command resumes from
    if sig != signal.SIGINT:
        return
    again = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=900,
                           env={**os.environ, **AVX2, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    results = list((work / "store").rglob("result.json"))
    assert len(results) == 3
    done = fold_runs(work)
    assert sorted(s for n, s in done.items() if n.endswith(("fold1", "fold2", "fold3"))).count("FINISHED") == 3, done


def test_a_second_ctrl_c_stops_at_once_and_leaves_nothing_running(tmp_path: Path) -> None:
    proc, work, _ = start(tmp_path)
    wait_for_training(proc, work)
    t0 = time.monotonic()
    code, err = stop(proc, [signal.SIGINT, signal.SIGINT], gap=0.3)
    assert code == 130, err[-3000:]
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopping the running tasks now" in err
    assert survivors(work) == []
    runs = fold_runs(work)
    assert runs and "FAILED" not in runs.values() and "RUNNING" not in runs.values(), (runs, run_errors(work))
