"""Which torch device a step runs on: an explicit request is honoured or refused, never silently downgraded.

`resolve_device(None)` (or "auto") picks CUDA when it is usable and the CPU otherwise: right for a
laptop. `resolve_device("cuda")` is what the GPU components pass: if CUDA is not usable (no GPU,
a driver older than the wheel's CUDA needs, a CPU-only build of torch) it raises `DeviceError`
instead of training on the CPU while a GPU is held.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A requested device cannot be used; the message says why and what to check."""


def _cuda_problem() -> str | None:
    """None if CUDA is usable, else a one-line reason."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU: no device, or an NVIDIA "
                "driver too old for this CUDA version (see docs/cluster.md, GPU requirements)")
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
