"""Compiled kernels give the eager functions' numbers, and a failed compile falls back to eager with a warning."""

import numpy as np
import pytest
import torch

from intermix_core.config import AugmentConfig
from intermix_core.method import fused as fused_module
from intermix_core.method.bank import ClipBank, _scaled_crops, draw_crops
from intermix_core.method.fused import fused
from intermix_core.method.mixing import _term_backward, _term_forward

pytestmark = pytest.mark.slow  # the first torch.compile of a process takes tens of seconds on a CPU


def _compiled(recwarn: pytest.WarningsRecorder) -> None:
    """The compile happened: no fallback to eager (whose numbers would equal the eager ones trivially)."""
    failed = [str(w.message) for w in recwarn if "torch.compile failed" in str(w.message)]
    assert not failed, failed


def test_compiled_scaled_crops_equal_the_eager_ones(monkeypatch, recwarn):
    monkeypatch.setenv("INTERMIX_COMPILE", "1")
    rng = np.random.default_rng(0)
    clips = [rng.integers(-32768, 32768, size=n).astype(np.int16) for n in (1, 300, 5000, 12345)]
    bank = ClipBank.from_arrays(clips, np.zeros(4), length=4000)
    draw = draw_crops(bank, torch.arange(4).repeat(4), AugmentConfig(scale=True), torch.Generator().manual_seed(1))
    torch.testing.assert_close(_scaled_crops(bank, draw), _scaled_crops.eager(bank, draw), rtol=1e-6, atol=1e-6)
    _compiled(recwarn)


@pytest.mark.parametrize("signed", [False, True])
def test_compiled_interference_term_equals_the_eager_one(monkeypatch, recwarn, signed):
    monkeypatch.setenv("INTERMIX_COMPILE", "1")
    torch.manual_seed(0)
    a, b = torch.randn(4, 300, dtype=torch.float64), torch.randn(4, 300, dtype=torch.float64)
    c, grad = torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 300, dtype=torch.float64)
    torch.testing.assert_close(_term_forward(a, b, c, signed), _term_forward.eager(a, b, c, signed))
    for got, want in zip(_term_backward(grad, a, b, c, 1e-6, signed), _term_backward.eager(grad, a, b, c, 1e-6, signed)):
        torch.testing.assert_close(got, want)
    _compiled(recwarn)


def test_a_failed_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    """A stand-in for a machine without a compiler: torch.compile itself raises."""
    monkeypatch.setenv("INTERMIX_COMPILE", "1")

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(fused_module.torch, "compile", broken_compile)
    double = fused(lambda x: x * 2)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*running it eagerly"):
        assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))  # eager from then on, no second warning
    monkeypatch.setenv("INTERMIX_COMPILE", "0")
    assert torch.equal(fused(lambda x: x + 1)(torch.zeros(1)), torch.ones(1))
