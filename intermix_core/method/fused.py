"""Fused kernels for the elementwise hot spots (crop interpolation, the interference term), with an eager fallback.

`fused(fn)` wraps a function of tensors: on its first call it tries `torch.compile(fn, dynamic=True)`,
which fuses its chain of elementwise ops into one kernel per pass (Triton on CUDA, C++ on CPU); if
compiling fails (no compiler, an unsupported op) it warns once and runs `fn` eagerly from then on.
Both give the same numbers (the tests hold them side by side). INTERMIX_COMPILE chooses when:

    auto (default)  compiled for CUDA tensors, eager on the CPU (a first compile there costs 5-30 s
                    per process: worth it for hours of GPU training, not for a short CPU run)
    1               compiled everywhere (benchmarks/bench_throughput.py reports both)
    0               eager everywhere
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
ENV = "INTERMIX_COMPILE"


def compile_mode() -> str:
    """'auto', '1' or '0' from $INTERMIX_COMPILE (anything else is 'auto')."""
    value = os.environ.get(ENV, "auto").strip().lower()
    return value if value in ("0", "1") else "auto"


def fused(fn: F) -> F:
    """`fn`, compiled on first use where INTERMIX_COMPILE allows (the device of the first argument that has one)."""
    state: dict[str, Any] = {"compiled": None, "failed": False}

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        mode = compile_mode()
        device = next((d for a in args if isinstance(d := getattr(a, "device", None), torch.device)), torch.device("cpu"))
        if state["failed"] or mode == "0" or (mode == "auto" and device.type != "cuda"):
            return fn(*args, **kwargs)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=True)
        try:
            return state["compiled"](*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the eager function is always right
            state["failed"] = True
            warnings.warn(f"{fn.__qualname__}: torch.compile failed ({type(err).__name__}: {str(err)[:200]}); "
                          f"running it eagerly (set {ENV}=0 to skip compiling)", stacklevel=2)
            return fn(*args, **kwargs)

    call.eager = fn  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]
