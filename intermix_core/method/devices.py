"""Which torch device a step runs on: an explicit request is honoured or refused, never silently downgraded.

`resolve_device(None)` (or "auto") picks CUDA when it is usable and the CPU otherwise: right for a
laptop. `resolve_device("cuda")` is what the GPU components pass: if CUDA is not usable (no GPU,
a driver older than the wheel's CUDA needs, a CPU-only build of torch) it raises `DeviceError`
instead of training on the CPU while a GPU is held.

`choose_precision` turns the precision `auto` into float32 or bfloat16 for the device at hand, with the reason
in one line: bfloat16 only where it is faster (a CPU whose oneDNN and ATen kernels have native bfloat16).

`CUDA_BUILDS` is the driver matrix of torch 2.11's CUDA flavours (docker/Dockerfile's `CUDA_FLAVOUR`
builds one; docs/cluster.md shows the table); `cuda_driver_note` names the node's driver and the
image's CUDA in one line when they do not match.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA flavour of the torch 2.11 wheels: its index name, the NVIDIA drivers it needs, the GPUs it runs on."""

    version: str  # CUDA version, as torch.version.cuda reports it
    flavour: str  # PyTorch's name: https://download.pytorch.org/whl/<flavour>
    min_driver: str  # oldest Linux driver: CUDA minor version compatibility (12.x: >= 525.60.13, 13.x: >= 580)
    architectures: str  # compiled GPU architectures (torch._C._cuda_getArchFlags())


# torch 2.11's stable CUDA builds are 12.6, 12.8 and 13.0 (pytorch/pytorch RELEASE.md, release compatibility
# matrix); the architectures are PyTorch's build lists (pytorch/test-infra tools/pkg-helpers cuda.py, #7046; 13.0
# checked in a built image); drivers from NVIDIA's CUDA compatibility guide (minor version compatibility) and
# the CUDA toolkit release notes. Wheels carry the CUDA runtime: a node needs only the driver.
CUDA_BUILDS = {
    "12.6": CudaBuild("12.6", "cu126", "525.60.13", "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90"),
    "12.8": CudaBuild("12.8", "cu128", "525.60.13", "sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"),
    "13.0": CudaBuild("13.0", "cu130", "580.65.06", "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"),
}
# the default flavour of the cuda image: runs on every driver from R525 on (the branches managed GPU node pools
# install) and on V100 to Blackwell; PyPI's torch 2.11 is the 13.0 build, which needs R580
DEFAULT_CUDA = "12.8"
_NVRM = re.compile(r"Kernel Module(?: for \S+)?\s+([0-9]+\.[0-9]+(?:\.[0-9]+)?)")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def driver_versions() -> tuple[str | None, tuple[int, int] | None]:
    """(NVIDIA driver version, e.g. '535.104.05'; newest CUDA it supports, e.g. (12, 2)); None for what is not found.

    The CUDA version comes from libcuda's cuDriverGetVersion (the driver library the NVIDIA container
    runtime mounts), the driver version from /proc/driver/nvidia/version or nvidia-smi.
    """
    supported = None
    try:
        value = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(value)) == 0 and value.value > 0:
            supported = (value.value // 1000, value.value % 1000 // 10)
    except (OSError, AttributeError):
        pass
    driver = None
    try:
        match = _NVRM.search(Path("/proc/driver/nvidia/version").read_text())
        driver = match.group(1) if match else None
    except OSError:
        pass
    if driver is None and supported is not None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.split()
            driver = out[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    return driver, supported


def cuda_driver_note(runtime: str | None = None, driver: str | None = None,
                     supported: tuple[int, int] | None = None) -> str | None:
    """One line naming the driver and torch's CUDA version when the driver supports an older CUDA; else None.

    Without arguments it reads torch.version.cuda and the node (driver_versions); no driver: None.
    """
    runtime = runtime if runtime is not None else torch.version.cuda
    if supported is None:
        driver, supported = driver_versions()
    if runtime is None or supported is None or supported >= _version(runtime)[:2]:
        return None
    build = CUDA_BUILDS.get(runtime)
    have = f"NVIDIA driver {driver or '(version unknown)'} supports CUDA up to {supported[0]}.{supported[1]}"
    want = f"this image's torch {torch.__version__.split('+')[0]} is built for CUDA {runtime}"
    if supported[0] == _version(runtime)[0] and build and driver and _version(driver) >= _version(build.min_driver):
        return (f"{have}; {want}: it runs by CUDA minor version compatibility (driver >= {build.min_driver}; "
                f"no PTX JIT); docs/cluster.md, driver matrix")
    fits = [b for b in CUDA_BUILDS.values() if driver and _version(driver) >= _version(b.min_driver)]
    hint = (f"use the image built with --build-arg CUDA_FLAVOUR={fits[-1].flavour}" if fits
            else f"upgrade the driver to >= {min((b.min_driver for b in CUDA_BUILDS.values()), key=_version)}")
    return f"{have}; {want}, which needs driver >= {build.min_driver if build else '?'}: {hint} (docs/cluster.md, driver matrix)"


class DeviceError(ValueError):
    """A requested device cannot be used; the message says why and what to check."""


def _cuda_problem() -> str | None:
    """None if CUDA is usable, else a one-line reason."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return cuda_driver_note() or (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU: no device, or an NVIDIA "
            "driver too old for this CUDA version (see docs/cluster.md, driver matrix)")
    return None


def resolve_device(requested: str | None = None) -> torch.device:
    """The torch.device for `requested` ("auto"/None, "cpu", "cuda", "cuda:N"); DeviceError if it cannot be used."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if _cuda_problem() is None else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        problem = _cuda_problem()
        if problem:
            raise DeviceError(f"device {requested!r} requested, but {problem}; refusing to fall back to the CPU")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise DeviceError(f"device {requested!r}: expected cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {requested!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise DeviceError(f"device {requested!r}: expected one of auto, cpu, cuda, cuda:N")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU, whose operators return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """'NVIDIA H200', or the CPU's model and torch's thread count: the machine a benchmark figure comes from."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    imitated = os.environ.get("ATEN_CPU_CAPABILITY")  # the plain-AVX2 imitation of a user's CPU (README, Measured)
    return f"{cpu}, {torch.get_num_threads()} thread(s)" + (f", ATEN_CPU_CAPABILITY={imitated}" if imitated else "")


def default_burst(device: torch.device) -> int:
    """Back-to-back calls per timing (`time_per_call`): 8 on a GPU, 1 on a CPU, where there is no queue to fill."""
    return 8 if device.type == "cuda" else 1


def time_per_call(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of `fn` over `calls` calls back to back, with the device synchronized at both ends only.

    That is the rate a training loop sees on a GPU: it never waits for a step, so the host queues the next step's
    launches while the device runs this one's kernels. Timing single calls with a wait after each (calls=1) adds
    the host's launch time of every step's first kernels to the device's time.
    """
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / calls


# --- precision ----------------------------------------------------------------------------------------------------

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA, oneDNN's "CPU dispatcher control") without bfloat16 arithmetic: under them
# oneDNN emulates bf16 convolutions. Measured here (M18 InterMix step, batch 16, one thread, AMD EPYC with
# AVX512-BF16, 2026-12-06): fp32 0.33 s; bf16 0.20 s natively, 0.70 s under AVX512_CORE, 4.2 s under AVX2 (13x)
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
# the CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4 on) and AMX
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
GPU_PRECISION_NOTE = ("float32: bfloat16 was measured no faster on an H200 (EnvNet-v2 InterMix step 0.94x of "
                      "float32, README 'On the GPU')")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None, environ: dict[str, str] | None = None,
                aten_capability: str | None = None) -> tuple[bool, str]:
    """(whether this CPU runs bfloat16 natively in both oneDNN and ATen, why): the CPU's flags and the ISA caps set."""
    flags = cpu_flags() if flags is None else flags
    environ = dict(os.environ) if environ is None else environ
    aten = aten_capability if aten_capability is not None else torch.backends.cpu.get_cpu_capability()
    have = [f for f in _BF16_FLAGS if f in flags]
    if not have:
        return False, "this CPU has no native bfloat16 (no AVX512-BF16 or AMX): oneDNN would emulate it, ~13x slower"
    cap = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap in _ONEDNN_WITHOUT_BF16:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off the CPU's bfloat16 units: it would emulate bf16, slower"
    if not aten.upper().startswith("AVX512"):
        return False, f"ATen runs {aten} kernels here (ATEN_CPU_CAPABILITY), where bfloat16 gains nothing over float32"
    return True, f"this CPU has native bfloat16 ({', '.join(have)}), ~1.7x faster than float32 here"


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(fp32 or bf16, one line saying which and why) for optim.precision on `device`; `auto` picks the faster."""
    if requested != "auto":
        return requested, f"precision {requested} (as configured)"
    if device.type == "cuda":
        return "fp32", f"precision auto -> {GPU_PRECISION_NOTE}"
    native, why = native_bf16()
    return ("bf16" if native else "fp32"), f"precision auto -> {'bf16' if native else 'fp32'}: {why}"
