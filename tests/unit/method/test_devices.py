"""The device rule: an explicit CUDA request is refused when CUDA is not usable, never downgraded to the CPU."""

import os
import subprocess
import sys

import pytest
import torch

from intermix_core.config.grid import expand, load_grid
from intermix_core.method.devices import DeviceError, choose_precision, device_name, native_bf16, resolve_device
from pipelines.cli import main


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="refusing to fall back to the CPU"):
        resolve_device(name)


def test_unknown_device_lists_the_choices() -> None:
    with pytest.raises(DeviceError, match="expected one of auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_cli_train_on_cuda_fails_in_one_line(tmp_path, capsys) -> None:
    code = main(["train", "--dataset", "esc10", "--model", "piczak_cnn", "--strategy", "standard",
                 "--data", str(tmp_path / "none"), "--fold", "1", "--out", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "refusing to fall back to the CPU" in err


# the node's driver is given as arguments: a test double of what driver_versions() reads from libcuda and /proc
@pytest.mark.parametrize(
    "runtime, driver, supported, expected",
    [
        ("13.0", "535.104.05", (12, 2), "NVIDIA driver 535.104.05 supports CUDA up to 12.2; this image's torch 2.11.0 is "
         "built for CUDA 13.0, which needs driver >= 580.65.06: use the image built with --build-arg CUDA_FLAVOUR=cu128"),
        ("12.8", "535.104.05", (12, 2), "built for CUDA 12.8: it runs by CUDA minor version compatibility (driver >= 525.60.13"),
        ("12.6", "470.82.01", (11, 4), "which needs driver >= 525.60.13: upgrade the driver to >= 525.60.13"),
        ("12.8", "570.86.15", (12, 8), None),
        ("12.8", "580.95.05", (13, 0), None),
    ],
)
def test_driver_and_cuda_mismatch_is_one_line(runtime, driver, supported, expected) -> None:
    from intermix_core.method.devices import cuda_driver_note

    note = cuda_driver_note(runtime, driver, supported)
    assert (note is None) if expected is None else (expected in note and "\n" not in note)


def test_the_driver_matrix_is_docker_and_docs_truth() -> None:
    """The Dockerfile's default flavour, the image tag's CUDA and docs/cluster.md's matrix come from CUDA_BUILDS."""
    import re
    from pathlib import Path

    from components.image import resolve_images
    from intermix_core.method.devices import CUDA_BUILDS, DEFAULT_CUDA

    root = Path(__file__).resolve().parents[3]
    dockerfile = (root / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^ARG CUDA_FLAVOUR={CUDA_BUILDS[DEFAULT_CUDA].flavour}$", dockerfile, re.MULTILINE)
    assert resolve_images(tag="t").cuda.endswith(f":t-cuda{DEFAULT_CUDA}")
    docs = (root / "docs" / "cluster.md").read_text()
    for build in CUDA_BUILDS.values():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{build.flavour}`"))
        assert build.version in row and f">= {build.min_driver}" in row and build.architectures in row, row


def test_the_train_component_starts_its_log_with_the_note(monkeypatch, capsys, tmp_path) -> None:
    """The train component's first line names driver and CUDA when they do not match (the node's driver is a
    test double here: this machine has none), before anything else can fail."""
    from kfp.dsl import Model

    from components.train import train_fold, train_pack
    from intermix_core.method import devices
    from intermix_core.run import steps

    note = devices.cuda_driver_note("13.0", "535.104.05", (12, 2))
    monkeypatch.setattr(steps, "cuda_driver_note", lambda: note)  # what the components' first step asks
    for component, where in ((train_fold, {"fold": 1}), (train_pack, {"folds": "1 2"})):
        with pytest.raises(Exception):  # noqa: B017 - no dataset there: the task fails after its first line
            component(config_json="{}", grid_id="g", tracking_uri="", store_root="", data_uri=str(tmp_path / "none"),
                      trained=Model(uri=str(tmp_path / "m")), device="cuda", **where)
        assert capsys.readouterr().out.splitlines()[0] == f"warning: {note}"


def test_time_per_call_runs_the_burst_back_to_back_and_divides(monkeypatch):
    """Benchmarks time bursts of calls with one sync at each end (what a training loop sees on a GPU)."""
    from intermix_core.method import devices

    events: list[str] = []
    clock = iter([10.0, 10.9])  # start, end: 0.9 s for the whole burst
    monkeypatch.setattr(devices.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(devices, "synchronize", lambda device: events.append("sync"))
    per_call = devices.time_per_call(lambda: events.append("call"), torch.device("cpu"), 3)
    assert per_call == pytest.approx(0.3)
    assert events == ["sync", "call", "call", "call", "sync"]
    assert devices.default_burst(torch.device("cpu")) == 1 and devices.default_burst(torch.device("cuda")) == 8


# --- precision auto: bfloat16 only where the CPU runs it natively in oneDNN and ATen ------------------------------

NATIVE = {"avx2", "avx512f", "avx512_bf16"}


@pytest.mark.parametrize(("flags", "environ", "aten", "native", "why"), [
    (NATIVE, {}, "AVX512", True, "native bfloat16 (avx512_bf16)"),
    ({"avx2", "amx_bf16", "amx_tile"}, {}, "AVX512", True, "amx_bf16"),
    ({"avx2", "fma"}, {}, "AVX2", False, "no native bfloat16"),
    (NATIVE, {"ONEDNN_MAX_CPU_ISA": "avx2"}, "AVX512", False, "ONEDNN_MAX_CPU_ISA=AVX2"),
    (NATIVE, {"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, "AVX512", False, "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    (NATIVE, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "AVX512", True, "native"),
    (NATIVE, {}, "AVX2", False, "ATen runs AVX2 kernels"),
], ids=["avx512-bf16", "amx", "avx2-cpu", "onednn-capped-avx2", "onednn-capped-avx512", "onednn-capped-bf16",
        "aten-avx2"])
def test_native_bf16_reads_the_cpu_and_the_isa_caps(flags, environ, aten, native, why) -> None:
    got, reason = native_bf16(flags, environ, aten)
    assert got is native
    assert why in reason


def test_choose_precision_auto_and_explicit() -> None:
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert choose_precision("auto", cuda)[0] == "fp32"
    assert choose_precision("bf16", torch.device("cpu")) == ("bf16", "precision bf16 (as configured)")
    assert choose_precision("fp32", cuda)[0] == "fp32"
    precision, line = choose_precision("auto", torch.device("cpu"))
    assert precision == ("bf16" if native_bf16()[0] else "fp32")
    assert line.startswith(f"precision auto -> {precision}: ")


def test_this_machine_under_the_avx2_imitation_picks_fp32() -> None:
    """ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (a plain AVX2 CPU's kernels) runs `auto` as float32."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("import torch; from intermix_core.method.devices import choose_precision; "
            "print(choose_precision('auto', torch.device('cpu'))[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "fp32"


def test_the_demo_grid_leaves_its_precision_to_the_machine() -> None:
    """The demo trains every cell at precision `auto`: float32 under the AVX2 imitation (above), bf16 only natively."""
    assert {c.config.optim.precision for c in expand(load_grid("demo"))} == {"auto"}


def test_a_cpu_figure_names_its_cpu_threads_and_an_imitated_capability(monkeypatch):
    """A benchmark record says which machine it comes from, including the plain-AVX2 imitation of a user's CPU."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    plain = device_name(torch.device("cpu"))
    assert plain.endswith(f", {torch.get_num_threads()} thread(s)") and "ATEN" not in plain
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert device_name(torch.device("cpu")) == plain + ", ATEN_CPU_CAPABILITY=avx2"
