"""The README's "Using it" sequence runs as written, in an empty folder: it prepares what it trains on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # it trains and attacks a fold (about a minute on 2 cores)

ROOT = Path(__file__).resolve().parents[2]


def using_it_block() -> str:
    """The first bash block of README.md's "## Using it" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using it"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_readme_sequence_runs_as_written(tmp_path: Path) -> None:
    block = using_it_block()
    assert "intermix prepare" in block and block.index("intermix prepare") < block.index("intermix train")
    intermix = Path(sys.executable).parent / "intermix"
    if not intermix.exists():
        pytest.skip("intermix console script not installed (pip install -e .)")
    env = {**os.environ, "PATH": f"{intermix.parent}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("INTERMIX_WORKDIR", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "prepared esc10 at 8000 Hz: 120 clips in folds [1, 2, 3]" in out
    assert "esc10/m18/intermix/fold1: test error" in out and "FGSM error" in out
    assert "name: intermix" in out and "# demo-" in out  # the config printed as YAML
    assert (tmp_path / "runs" / "report" / "report.html").is_file()
    assert "has not run here" in proc.stderr  # status of a grid that never ran here says so
    assert len(list((tmp_path / "compiled").glob("*.yaml"))) == 18
