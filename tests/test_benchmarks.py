"""The profiling benchmark runs on the CPU and reports what it says it reports (its GPU run is the one that matters)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_profile_ranks_a_steps_operators_for_each_strategy() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_profile.py"), "--models", "piczak_cnn",
                           "--strategies", "standard", "bc", "--steps", "2", "--top", "4", "--threads", "1",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heads = re.findall(r"^piczak_cnn (\w+) fp32, batch 32: ([\d.]+) ms per step .*own time ([\d.]+) ms per step "
                       r"\((\d+)% of the wall time\)$", proc.stdout, re.M)
    assert [h[0] for h in heads] == ["standard", "bc"]
    for _, wall, busy, share in heads:  # on a CPU the operators' own time is nearly all of the step
        assert 0 < float(busy) <= float(wall) * 1.05 and 50 <= int(share) <= 105
    rows = re.findall(r"^\s+([\d.]+) ms\s+([\d.]+)%\s+([\d.]+)/step  (aten::\w+)", proc.stdout, re.M)
    assert len(rows) == 8 and {"aten::mm", "aten::addmm"} & {r[3] for r in rows}  # PiczakCNN: its fc layers lead
    first = [float(r[0]) for r in rows[:4]]
    assert first == sorted(first, reverse=True)  # ranked by their own time
