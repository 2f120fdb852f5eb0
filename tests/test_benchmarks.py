"""The profiling benchmark runs on the CPU and reports what it says it reports (its GPU run is the one that matters)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    flops = re.findall(r"^  ([\d.]+) GFLOP per sample \(forward, backward; matmuls and convolutions\): ([\d.]+) TFLOP/s "
                       r"achieved$", proc.stdout, re.M)
    assert len(flops) == 2 and all(0.1 < float(f[0]) < 0.3 for f in flops)  # PiczakCNN: ~0.19 GFLOP per sample
    for (_, wall, _, _), (gflop, rate) in zip(heads, flops):  # the rate is the work over the step's time
        assert abs(float(rate) - float(gflop) * 32 / float(wall)) <= 0.01 + 0.02 * float(rate)
    rows = re.findall(r"^\s+([\d.]+) ms\s+([\d.]+)%\s+([\d.]+)/step  (\S+)$", proc.stdout, re.M)  # any operator
    assert len(rows) == 8 and {"aten::mm", "aten::addmm"} & {r[3] for r in rows}  # PiczakCNN: its fc layers lead
    first = [float(r[0]) for r in rows[:4]]
    assert first == sorted(first, reverse=True)  # ranked by their own time


def _bench_options():
    spec = importlib.util.spec_from_file_location("bench_options", ROOT / "benchmarks" / "bench_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tuning_pick_keeps_float32_and_needs_a_margin() -> None:
    bench = _bench_options()
    got = bench.pick({"fp32": 1.0, "cudnn_benchmark": 1.6, "channels_last+cudnn_benchmark": 2.1, "bf16": 3.0,
                      "compile": 2.5})
    assert got == {"variant": "channels_last+cudnn_benchmark", "speedup": 2.1,
                   "set": ["optim.channels_last=true", "optim.cudnn_benchmark=true"]}  # not bf16, not compile
    assert bench.pick({"fp32": 1.0, "channels_last": 1.02})["variant"] == "fp32"  # inside the margin: noise
    assert bench.pick({"fp32": 1.0, "bf16": 2.0}) == {"variant": "fp32", "speedup": 1.0, "set": []}


def test_bench_options_runs_each_variant_in_its_own_process(tmp_path: Path) -> None:
    saved = tmp_path / "options.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_options.py"), "--models", "piczak_cnn",
                           "--variants", "cudnn_benchmark", "bf16", "--repeats", "2", "--threads", "1",
                           "--device", "cpu", "--save", str(saved)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(saved.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["fp32", "cudnn_benchmark", "bf16"] and data["device"] == "cpu"
    assert rows["fp32"]["vs_fp32"] == 1.0 and rows["fp32"]["max_logit_change"] == 0.0
    # the same weights in every process: float32 variants agree exactly on a CPU, bf16 only to its precision
    assert rows["cudnn_benchmark"]["max_logit_change"] == 0.0 and 0 < rows["bf16"]["max_logit_change"] < 0.1
    assert all(r["samples_per_s"] > 0 and r["warmup_seconds"] > 0 for r in rows.values())
    assert data["pick"]["piczak_cnn"]["variant"] in ("fp32", "cudnn_benchmark")
    assert re.search(r"^piczak_cnn: pick (fp32|cudnn_benchmark) \([\d.]+x fp32\)$", proc.stdout, re.M)


def test_bench_precision_times_both_precisions_under_each_cpu_setting() -> None:
    """Each setting's workers load torch under its caps: under the AVX2 imitation `auto` picks fp32, and the table
    has a row per setting with both times and their ratio."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_precision.py"), "--models", "piczak_cnn",
                           "--batch", "4", "--input-length", "21504", "--repeats", "1", "--steps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line[11:33].strip(): line.split("(not")[0].split() for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"this CPU", "AVX-512 without bf16", "plain AVX2"}
    assert rows["plain AVX2"][-1] == "fp32" and rows["AVX-512 without bf16"][-1] == "fp32"
    for cells in rows.values():
        fp32, bf16, ratio = float(cells[-4]), float(cells[-3]), float(cells[-2].rstrip("x"))
        assert fp32 > 0 and bf16 > 0 and abs(bf16 / fp32 - ratio) < 0.01 + 0.01 * ratio
@pytest.mark.slow
def test_bench_throughput_times_a_pack_and_estimate_counts_packs(tmp_path: Path) -> None:
    """`--pack 2`: a record per pack beside the one-fold record, printed side by side; `intermix estimate --pack 2`
    reads its aggregate rate, and falls back to the one-fold figure (saying so) for a pack size not measured."""
    saved = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_throughput.py"), "--models", "piczak_cnn",
                           "--batch", "4", "--repeats", "1", "--threads", "1", "--device", "cpu", "--pack", "2",
                           "--save", str(saved)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(saved.read_text())
    assert sorted((r["augment"], r["pack"]) for r in records) == [(False, 1), (False, 2), (True, 1), (True, 2)]
    for r in records:
        if r["pack"] == 2:
            alone = next(o for o in records if o["pack"] == 1 and o["augment"] == r["augment"])
            assert r["one_fold_full_samples_per_s"] == alone["full_samples_per_s"] and r["full_samples_per_s"] > 0
            # on a CPU the pack runs one convolution per fold; grouped ones are timed beside it (with scale + gain)
            assert r["pack_kernels"] == "per_fold"
            assert (r["other_kernels_samples_per_s"] > 0) if r["augment"] else r["other_kernels_samples_per_s"] is None
    assert len(re.findall(r"^piczak_cnn +fp32 +no +pack of 2: [\d,.]+ samples/s in all, one fold alone [\d,.]+ "
                          r"\([\d.]+x; per_fold convolutions\)$", proc.stdout, re.M)) == 1
    assert len(re.findall(r"^piczak_cnn +fp32 +yes +pack of 2: [\d,.]+ samples/s in all, one fold alone [\d,.]+ "
                          r"\([\d.]+x; per_fold convolutions; with grouped convolutions [\d,.]+\)$", proc.stdout, re.M)) == 1
    from intermix_core.config.grid import load_grid
    from intermix_core.run.estimate import estimate_grid

    grid = load_grid("paper")
    piczak = [r for r in estimate_grid(grid, records, "cpu", pack=1) if r.setup.startswith("piczak")]
    packed = [r for r in estimate_grid(grid, records, "cpu", pack=2) if r.setup.startswith("piczak")]
    assert piczak and all(a.hours is not None and b.hours is not None for a, b in zip(piczak, packed))
    assert all(a.train_samples == b.train_samples and a.hours != b.hours for a, b in zip(piczak, packed))
    assert not any(r.pack_unmeasured for r in packed)
    others = [r for r in estimate_grid(grid, records, "cpu", pack=3) if r.setup.startswith("piczak")]
    assert all(r.pack_unmeasured == {"piczak_cnn"} for r in others)  # no record for packs of 3: one-fold figures


@pytest.mark.slow  # compiles the update (seconds to tens of seconds on a CPU)
def test_bench_update_times_both_forms_of_the_update_for_a_pack(tmp_path: Path) -> None:
    saved = tmp_path / "update.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_update.py"), "--models", "m18",
                           "--packs", "1", "2", "--repeats", "2", "--threads", "1", "--device", "cpu",
                           "--save", str(saved)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(saved.read_text())
    assert [(r["model"], r["pack"]) for r in records] == [("m18", 1), ("m18", 2)]
    one, two = records
    assert two["parameters"] == 2 * one["parameters"] and two["tensors"] == 2 * one["tensors"]
    for r in records:
        assert not r["compile_failed"] and r["first_step_max_diff"] < 1e-5  # the two forms agree
        assert r["speedup"] == pytest.approx(r["foreach_ms"] / r["compiled_ms"])
        assert r["compiled_gb_per_s"] == pytest.approx(5 * r["parameters"] * 4 / r["compiled_ms"] / 1e6)
        line = re.search(rf"^m18\s+pack {r['pack']}\s.*: ([\d.]+)x; first compiled call", proc.stdout, re.M)
        assert line and float(line.group(1)) == pytest.approx(r["speedup"], abs=0.006)
