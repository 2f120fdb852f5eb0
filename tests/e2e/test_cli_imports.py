"""The light commands answer at once: `intermix --help`, `show`, `config`, `estimate`, `status` and shell completion
import no torch, MLflow or kfp unless they need them (`status` reads MLflow; kfp only with --host).

Each command runs in a fresh interpreter under `python -X importtime`, whose report names every module the process
imported; the test reads the heavy ones out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "kfp", "boto3", "scipy", "matplotlib")


def imported(argv: list[str], cwd: Path,
             env: dict[str, str] | None = None) -> tuple[set[str], subprocess.CompletedProcess]:
    """The top-level packages `python -X importtime -m pipelines.cli ARGV` imported, and the finished process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("INTERMIX_WORKDIR", None)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "pipelines" in names, proc.stderr[-2000:]  # the report is there: the CLI itself was imported
    return names, proc


@pytest.mark.parametrize("argv, code, allowed", [
    (["--help"], 0, ()),
    (["show", "demo"], 0, ()),
    (["show", "paper", "--json"], 0, ()),
    (["config", "demo", "--strategy", "intermix", "--set", "optim.epochs=3"], 0, ()),
    (["estimate", "paper"], 0, ()),
    (["estimate", "paper", "--device", "cuda", "--max-gpus", "8"], 0, ()),
    (["run", "--help"], 0, ()),
    (["stauts"], 2, ()),  # a usage error: nothing of the commands is loaded
    # it reads the store and MLflow (here: a work directory that never ran the grid): never torch or kfp
    (["status", "demo"], 2, ("mlflow", "boto3", "scipy")),
])
def test_light_commands_import_no_torch_mlflow_or_kfp(argv: list[str], code: int, allowed: tuple[str, ...],
                                                      tmp_path: Path) -> None:
    names, proc = imported(argv, tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert set(HEAVY) & names <= set(allowed), (argv, sorted(set(HEAVY) & names))


def test_shell_completion_imports_none_of_them(tmp_path: Path) -> None:
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions.txt"
    line = "intermix status d"
    names, proc = imported([], tmp_path, {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                                          "_ARGCOMPLETE_STDOUT_FILENAME": str(out)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo" in out.read_text()
    assert not set(HEAVY) & names, sorted(set(HEAVY) & names)


def test_the_heavy_commands_still_load_what_they_need(tmp_path: Path) -> None:
    """The guard can fail: `train` loads torch, MLflow and kfp (pipelines.commands)."""
    names, proc = imported(["train", "--dataset", "esc10", "--model", "m18", "--strategy", "bc", "--print-config"],
                           tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"torch", "mlflow", "kfp"} <= names
