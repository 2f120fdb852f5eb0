"""Fused kernels for the elementwise hot spots (crop interpolation, the interference term, the optimizer's update).

`fused(fn)` wraps a function of tensors: on its first call it tries `torch.compile(fn, dynamic=True)`,
which fuses its chain of elementwise ops into one kernel per pass (Triton on CUDA, C++ on CPU); if
compiling fails (no compiler, an unsupported op) it warns once and runs `fn` eagerly from then on.
Both give the same numbers (the tests hold them side by side). `CompiledUpdate` does the same for an
in-place update of tensor lists (Chainer's NesterovAG, `intermix_core.method.optim`), whose caller keeps
its own eager path. INTERMIX_COMPILE chooses when:

    auto (default)  compiled for CUDA tensors, eager on the CPU (a first compile there costs 5-30 s
                    per process: worth it for hours of GPU training, not for a short CPU run)
    1               compiled everywhere (benchmarks/bench_throughput.py reports both)
    0               eager everywhere
"""

from __future__ import annotations

import functools
import os
import types
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


def wants_compile(device: torch.device) -> bool:
    """Whether INTERMIX_COMPILE asks for compiled kernels on `device` (auto: on CUDA only)."""
    mode = compile_mode()
    return mode == "1" or (mode == "auto" and device.type == "cuda")


def _warn_failed(fn: Callable[..., Any], err: Exception) -> None:
    """The one warning of a compile that failed: `fn` runs eagerly from now on (reported at its caller's caller)."""
    warnings.warn(f"{fn.__qualname__}: torch.compile failed ({type(err).__name__}: {str(err)[:200]}); "
                  f"running it eagerly (set {ENV}=0 to skip compiling)", stacklevel=3)


def fused(fn: F) -> F:
    """`fn`, compiled on first use where INTERMIX_COMPILE allows (the device of the first argument that has one)."""
    state: dict[str, Any] = {"compiled": None, "failed": False}

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        device = next((d for a in args if isinstance(d := getattr(a, "device", None), torch.device)), torch.device("cpu"))
        if state["failed"] or not wants_compile(device):
            return fn(*args, **kwargs)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=True)
        try:
            return state["compiled"](*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the eager function is always right
            state["failed"] = True
            _warn_failed(fn, err)
            return fn(*args, **kwargs)

    call.eager = fn  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


class CompiledUpdate:
    """An in-place update of tensor lists compiled on first use (static shapes), beside the caller's eager path.

    `wanted(device)` says whether to call it (INTERMIX_COMPILE, as `fused`); calling it runs the compiled
    function and returns True, or warns once and returns False if torch.compile failed (it fails while
    tracing or compiling, before any kernel has changed a tensor): the caller then runs its eager path,
    as it does from then on. Each instance compiles at most 8 layouts (lists of shapes; Dynamo's
    recompile_limit), enough for a pack whose folds drop out one by one; past that the function runs
    uncompiled (same numbers, more memory traffic).
    """

    def __init__(self, fn: Callable[..., None]) -> None:
        # a code object of its own: Dynamo keeps compiled graphs per code object, at most
        # torch._dynamo.config.recompile_limit (8) of them, then runs the function uncompiled; shared by every
        # optimizer of a process (a study worker's packs, a benchmark's models) the 9th layout would run eagerly
        self.fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                     fn.__closure__)
        self.fn.__qualname__ = fn.__qualname__
        self.compiled: Callable[..., None] | None = None
        self.failed = False

    def wanted(self, device: torch.device) -> bool:
        """Whether the compiled function should run for tensors on `device`."""
        return not self.failed and wants_compile(device)

    def __call__(self, *args: Any) -> bool:
        """Run the compiled function on `args`; False if it could not be compiled (nothing was changed)."""
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False)
        try:
            self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the caller's eager path is always right
            self.failed = True
            _warn_failed(self.fn, err)
            return False
        return True
