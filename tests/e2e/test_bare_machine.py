"""A bare GPU machine has PyTorch, pydantic and soundfile but no MLflow, boto3 or kfp: the study path runs there.

The missing packages are made unimportable here (a folder first on PYTHONPATH whose mlflow, kfp, boto3 and botocore
raise ImportError), which is what a lent GPU machine's Python looks like; the rest is real: real clips, the real
script, real training and FGSM on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intermix_core.testing import demo_subset

ROOT = Path(__file__).resolve().parents[2]
MISSING = ("mlflow", "kfp", "boto3", "botocore")
TINY_GRID = """\
name: tiny-bare
datasets: [esc10]
setups: [envnet]
strategies: [standard, intermix]
folds: [1]
overrides: {optim: {epochs: 2, batch_size: 8, eval_every: 2}, attack: {epsilons: [0.01]}, num_crops: 2}
"""


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a Python without MLflow, boto3 and kfp."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in MISSING:
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on this machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT)]), "OMP_NUM_THREADS": "2",
           "INTERMIX_WORKER_THREADS": "1"}
    for var in ("MLFLOW_TRACKING_URI", "INTERMIX_STORAGE_ROOT", "OUT"):
        env.pop(var, None)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_blocked_packages_are_really_missing(bare_env: dict[str, str]) -> None:
    for name in MISSING:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=bare_env, capture_output=True, text=True)
        assert proc.returncode != 0 and "not installed on this machine" in proc.stderr


@pytest.mark.slow
def test_gpu_study_script_runs_without_mlflow_boto3_or_kfp(bare_env: dict[str, str], tmp_path: Path) -> None:
    raw = demo_subset(tmp_path / "raw", per_class_per_fold=1, folds=(1, 2), seconds=1.5)
    grid = tmp_path / "tiny.yaml"
    grid.write_text(TINY_GRID)
    out, study = tmp_path / "out", tmp_path / "study"
    env = {**bare_env, "OUT": str(out), "STUDY_DIR": str(study), "LOGS": str(tmp_path / "logs"),
           "PREPARED": str(tmp_path / "prepared"), "ESC10": str(raw), "GRID": str(grid), "DEVICE": "cpu",
           "BUDGET": "240", "CONCURRENCY": "2", "BENCHMARKS": "0", "PYTHON": sys.executable,
           "TUNE_VARIANTS": "channels_last", "TUNE_REPEATS": "2"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    log = (out / "gpu-study.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "stage prepare: exit 0" in log and "stage tune: exit 0" in log and "stage study: exit 0" in log
    assert "stage throughput" not in log
    summary = json.loads((out / "study.json").read_text())
    assert summary["finished"] == 2 and summary["device"] == "cpu"
    # the study ran with what the tuning picked (channels-last only if it beat the plain step by the margin)
    tune = json.loads((out / "tune.json").read_text())
    assert [r["variant"] for r in tune["rows"]] == ["fp32", "channels_last"]
    picked = tune["pick"]["envnet"]
    assert picked["set"] == (["optim.channels_last=true"] if picked["variant"] == "channels_last" else [])
    assert summary["speed_options"] == {"precision": "fp32", "channels_last": picked["variant"] == "channels_last",
                                        "compile": False, "cudnn_benchmark": False}
    assert f"== study options: {' '.join(['--set', *picked['set']]) if picked['set'] else 'as the grid sets them'}" in log
    assert {f["label"] for f in summary["folds"]} == {"esc10/envnet/standard/fold1", "esc10/envnet/intermix/fold1"}
    assert "| EnvNet | Standard |" in (out / "table1.md").read_text()
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    # what comes back from a lent machine is a few small files: the checkpoints stay in STUDY_DIR
    assert not list(out.rglob("*.pt")) and len(list(study.rglob("checkpoint.pt"))) == 2


def test_estimate_and_usage_errors_without_the_cluster_stack(bare_env: dict[str, str]) -> None:
    proc = _cli(bare_env, "estimate", "paper")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "grid paper: " in proc.stdout and "device-hours" in proc.stdout
    proc = _cli(bare_env, "study", "no-such-grid.yaml", "--data", "x", "--out", "y")
    assert proc.returncode == 2 and proc.stderr.startswith("intermix: error: no-such-grid.yaml: no such grid file")
    assert "Traceback" not in proc.stderr


def test_a_store_source_without_boto3_is_one_line(bare_env: dict[str, str], tmp_path: Path) -> None:
    proc = _cli(bare_env, "prepare", "--dataset", "esc10", "--source", "s3://bucket/esc10", "--model", "envnet",
                "--out", str(tmp_path / "prepared"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "s3://bucket/esc10: s3:// stores need boto3" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "prepared").exists()
