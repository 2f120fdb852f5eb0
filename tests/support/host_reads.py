"""A dispatch mode counting the operators that make a device wait for the host (tests of the training loops)."""

from __future__ import annotations

import sys

from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts the operators that make a device wait for the host: .item()/float()/int()/bool() on a tensor
    (aten._local_scalar_dense) and the data-dependent shapes (nonzero, masked_select, unique)."""

    SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in self.SYNCING and not self._layer_draw():
            self.seen.append(name)
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _layer_draw() -> bool:
        """The mixer's layer comes from its CPU generator (Mixer.draw_layer): a host read that never waits for a GPU."""
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code.co_name == "draw_layer" and frame.f_code.co_filename.endswith("mixing.py"):
                return True
            frame = frame.f_back
        return False
