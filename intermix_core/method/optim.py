"""Optimisation: the reference LR schedule and the two Nesterov update rules (PyTorch's and Chainer's).

Both reference repositories (mil-tokyo/bc_learning_sound and scaleracademy/InterMix-ICASSP, `main.py`)
train with Chainer's `NesterovAG` plus a `WeightDecay` hook, whose step is not PyTorch's Nesterov SGD:

    Chainer (chainer/optimizers/nesterov_ag.py):   v <- m v - lr g;  theta <- theta + m^2 v - (1 + m) lr g
    PyTorch (torch.optim.SGD, nesterov=True):      b <- m b + g;     theta <- theta - lr (g + m b)

with g = grad + weight_decay * theta in both (Chainer's hook runs before the update). For one
gradient the first Chainer step is 2.71 lr g against PyTorch's 1.9 lr g, and Chainer's velocity
carries the learning rate it was accumulated with across LR decays (PyTorch's buffer holds raw
gradients). `optim.update_rule` picks one; Chainer's is the default (docs/method.md, "Optimisation").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from intermix_core.config import OptimConfig
from intermix_core.method.fused import CompiledUpdate


def learning_rate(optim: OptimConfig, epoch: int) -> float:
    """LR at 1-based `epoch`: LR * 0.1^(schedule points passed), LR * 0.1 during warm-up."""
    assert optim.lr is not None and optim.epochs is not None and optim.schedule is not None
    if epoch <= (optim.warmup or 0):
        return optim.lr * 0.1
    passed = sum(epoch > optim.epochs * s for s in optim.schedule)
    return optim.lr * 0.1**passed


def _nesterov_ag_foreach_(params: list[torch.Tensor], grads: list[torch.Tensor], vs: list[torch.Tensor],
                          lr: float, m: float, wd: float) -> None:
    """Chainer's update as five in-place foreach passes (14 sweeps over the parameters' size, no temporaries)."""
    if wd:  # the WeightDecay hook, in place as Chainer's: g <- g + wd theta (no 100 MB temporaries)
        torch._foreach_add_(grads, params, alpha=wd)
    torch._foreach_mul_(vs, m)
    torch._foreach_add_(vs, grads, alpha=-lr)  # v <- m v - lr g
    torch._foreach_add_(params, vs, alpha=m * m)
    torch._foreach_add_(params, grads, alpha=-(1.0 + m) * lr)


def _nesterov_ag_fused_(params: list[torch.Tensor], grads: list[torch.Tensor], vs: list[torch.Tensor],
                        lr: torch.Tensor, m: float, wd: float) -> None:
    """The same update written for torch.compile: one kernel reads theta, g, v and writes theta, v (5 sweeps).

    `lr` is a 0-dim tensor on the parameters' device, so that a new learning rate is a new value, not a
    new graph (a Python float would be compiled in as a constant: one recompilation per LR decay).
    The decayed gradient and lr * g are never stored: the compiler keeps them in registers.
    """
    g = torch._foreach_add(grads, params, alpha=wd) if wd else grads
    lr_g = torch._foreach_mul(g, lr)
    torch._foreach_mul_(vs, m)
    torch._foreach_sub_(vs, lr_g)  # v <- m v - lr g
    torch._foreach_add_(params, vs, alpha=m * m)
    torch._foreach_add_(params, lr_g, alpha=-(1.0 + m))


class ChainerNesterovAG(torch.optim.Optimizer):
    """Chainer's NesterovAG with its WeightDecay hook: v <- m v - lr g; theta <- theta + m^2 v - (1 + m) lr g.

    Where INTERMIX_COMPILE allows (by default on CUDA, `intermix_core.method.fused`), each step is one
    compiled kernel chain over all of a group's tensors (`_nesterov_ag_fused_`: 5 sweeps over the
    parameters' size instead of the foreach passes' 14, ~2.8x fewer bytes); elsewhere, or if compiling
    fails, the foreach passes. Both give the same numbers to float rounding (tests/unit/method/test_optim.py);
    `benchmarks/bench_update.py` times them side by side.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(f"invalid NesterovAG settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self._fused_update = CompiledUpdate(_nesterov_ag_fused_)
        self._lr_tensors: dict[tuple[torch.device, torch.dtype], tuple[float, torch.Tensor]] = {}

    def _lr_tensor(self, lr: float, like: torch.Tensor) -> torch.Tensor:
        """A 0-dim tensor holding `lr` on `like`'s device (refilled, without a host sync, only when lr changes)."""
        key = (like.device, like.dtype)
        held = self._lr_tensors.get(key)
        if held is None:
            held = (lr, torch.full((), lr, dtype=like.dtype, device=like.device))
        elif held[0] != lr:
            held = (lr, held[1].fill_(lr))
        self._lr_tensors[key] = held
        return held[1]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim.Optimizer's signature
        """One update of every parameter with a gradient (one compiled kernel chain, or foreach passes)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            vs = []
            for p in params:
                state = self.state[p]
                if "v" not in state:
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                vs.append(state["v"])
            fused = self._fused_update.wanted(params[0].device)
            if not (fused and self._fused_update(params, grads, vs, self._lr_tensor(lr, params[0]), m, wd)):
                _nesterov_ag_foreach_(params, grads, vs, lr, m, wd)
        return loss


def make_optimizer(params: Iterable[torch.Tensor], optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer `optim.update_rule` names, starting at `lr` (callers set each epoch's LR in param_groups).

    PyTorch's rule runs as its fused kernel (one pass per tensor, CPU and CUDA): on PiczakCNN's 26 M
    parameters the default per-tensor implementation took 0.26 s per step on one CPU thread, the
    fused one 0.023 s, more than the forward and backward pass itself.
    """
    if optim.update_rule == "chainer":
        return ChainerNesterovAG(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.nesterov, fused=True,
    )
