"""The LR schedule and the two Nesterov update rules, against hand-computed sequences."""

import pytest
import torch

from intermix_core.config import parse_config
from intermix_core.method.optim import ChainerNesterovAG, learning_rate, make_optimizer


def test_learning_rate_schedule_by_hand():
    o = parse_config({"dataset": "esc50", "model": "envnet_v2", "strategy": "standard"}).resolved_optim()
    assert learning_rate(o, 1) == pytest.approx(0.01)  # warm-up: LR * 0.1
    assert learning_rate(o, 11) == pytest.approx(0.1)
    assert learning_rate(o, 300) == pytest.approx(0.1)
    assert learning_rate(o, 301) == pytest.approx(0.01)
    assert learning_rate(o, 601) == pytest.approx(0.001)
    assert learning_rate(o, 1000) == pytest.approx(0.0001)


def _run(opt_cls, grads, lrs, **kw):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = opt_cls([p], lr=lrs[0], **kw)
    out = []
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().clone().tolist())
    return out


def test_chainer_first_step_is_2_71_lr_g_and_pytorch_1_9():
    g = [[0.5, 1.0]]
    chainer = _run(ChainerNesterovAG, g, [0.1], momentum=0.9)
    pytorch = _run(torch.optim.SGD, g, [0.1], momentum=0.9, nesterov=True)
    assert chainer[0] == pytest.approx([1.0 - 2.71 * 0.1 * 0.5, -2.0 - 2.71 * 0.1 * 1.0], rel=1e-12)
    assert pytorch[0] == pytest.approx([1.0 - 1.9 * 0.1 * 0.5, -2.0 - 1.9 * 0.1 * 1.0], rel=1e-12)


def test_chainer_sequence_with_weight_decay_and_an_lr_drop():
    grads = [[0.5, 1.0], [-1.0, 0.25], [0.3, -0.6]]
    lrs = [0.1, 0.1, 0.01]
    got = _run(ChainerNesterovAG, grads, lrs, momentum=0.9, weight_decay=0.01)
    # step 1 by hand: g' = g + 0.01 theta = (0.51, 0.98); v = -0.1 g' = (-0.051, -0.098);
    # theta += 0.81 v - 0.19 g' = (-0.13821, -0.26558)
    assert got[0] == pytest.approx([0.86179, -2.26558], abs=1e-12)
    # the rule written out in plain floats (no tensors): v <- m v - lr g'; theta <- theta + m^2 v - (1 + m) lr g'
    theta, v, m, want = [1.0, -2.0], [0.0, 0.0], 0.9, []
    for g, lr in zip(grads, lrs):
        gp = [gi + 0.01 * ti for gi, ti in zip(g, theta)]
        v = [m * vi - lr * gi for vi, gi in zip(v, gp)]
        theta = [ti + m * m * vi - (1 + m) * lr * gi for ti, vi, gi in zip(theta, v, gp)]
        want.append(theta)
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=1e-12)
    # after the drop to lr 0.01 the velocity still carries steps taken at lr 0.1: unlike PyTorch's buffer
    pytorch = _run(torch.optim.SGD, grads, lrs, momentum=0.9, weight_decay=0.01, nesterov=True)
    assert abs(got[2][0] - pytorch[2][0]) > 1e-3


@pytest.mark.parametrize("strategy", ["standard", "mixup", "bc", "speechmix", "intermix", "intermix_vanilla",
                                      "intermix_hidden", "intermix_no_rotation", "intermix_official"])
def test_every_preset_defaults_to_chainers_rule_and_pytorchs_stays_an_option(strategy):
    """The paper cites [6] (BC learning) for its optimiser; BC's and the authors' main.py use Chainer's NesterovAG."""
    p = [torch.nn.Parameter(torch.zeros(2))]
    cfg = parse_config({"dataset": "esc10", "model": "envnet_v2", "strategy": strategy}).resolved_optim()
    assert cfg.update_rule == "chainer" and type(make_optimizer(p, cfg, 0.1)) is ChainerNesterovAG
    forced = parse_config({"strategy": strategy, "optim": {"update_rule": "pytorch"}}).resolved_optim()
    assert forced.update_rule == "pytorch" and type(make_optimizer(p, forced, 0.1)) is torch.optim.SGD
    assert parse_config({"strategy": strategy}).optim.batch_size == 32  # the paper's; 64 is the published numbers'


def test_chainer_state_round_trips_through_a_checkpoint(tmp_path):
    p = torch.nn.Parameter(torch.ones(3))
    opt = ChainerNesterovAG([p], lr=0.1, weight_decay=5e-4)
    p.grad = torch.ones(3)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = ChainerNesterovAG([q], lr=0.1, weight_decay=5e-4)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for o, x in ((opt, p), (opt2, q)):
        x.grad = torch.full((3,), 0.5)
        o.step()
    assert torch.equal(p, q)


def _shaped_params(dtype=torch.float64):
    """Tensors shaped like a small model's: a conv weight, a BatchNorm's two vectors, a dense weight and bias."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 1, 1, 9), (16,), (16,), (40, 33), (40,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _train(monkeypatch, compile_mode, lrs, dtype=torch.float64):
    """Chainer's rule over `lrs` (one step each, a fixed gradient sequence) with INTERMIX_COMPILE=compile_mode."""
    monkeypatch.setenv("INTERMIX_COMPILE", compile_mode)
    params = _shaped_params(dtype)
    opt = ChainerNesterovAG(params, lr=lrs[0], momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
    return opt, params


@pytest.mark.slow  # the first torch.compile of a process takes tens of seconds on a CPU
def test_compiled_update_equals_the_foreach_passes_and_compiles_once_across_lr_decays(monkeypatch):
    """One compiled kernel chain (the GPU's default) gives the foreach passes' numbers, and an LR decay is a value."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    lrs = [0.01, 0.1, 0.1, 0.01, 0.001]  # warm-up, then two decays: three learning rates
    compiled_opt, compiled = _train(monkeypatch, "1", lrs)
    assert not compiled_opt._fused_update.failed and compiled_opt._fused_update.compiled is not None
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # no recompilation per learning rate
    eager_opt, eager = _train(monkeypatch, "0", lrs)
    assert eager_opt._fused_update.compiled is None
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(compiled_opt.state[a]["v"], eager_opt.state[b]["v"], rtol=1e-12, atol=1e-15)


def test_the_foreach_passes_run_on_the_cpu_by_default_and_after_a_failed_compile(monkeypatch):
    """auto: eager on a CPU (no compile); a compiler failure warns once and the step still happens, eagerly."""
    monkeypatch.delenv("INTERMIX_COMPILE", raising=False)
    opt, params = _train(monkeypatch, "auto", [0.1])
    assert opt._fused_update.compiled is None
    _, want = _train(monkeypatch, "0", [0.1, 0.1])

    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler (stand-in)")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed.*running it eagerly"):
        opt, got = _train(monkeypatch, "1", [0.1, 0.1])
    assert opt._fused_update.failed
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # the failed first call changed nothing: exactly the eager sequence


@pytest.mark.slow
def test_each_optimizer_has_its_own_compiled_layouts(monkeypatch):
    """Dynamo keeps compiled graphs per code object, up to a limit: two optimizers must not share that budget."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setenv("INTERMIX_COMPILE", "1")
    limit = torch._dynamo.config.recompile_limit
    # Dynamo's own patcher: monkeypatch.setattr on its config module leaves the name undefined after the test
    with torch._dynamo.config.patch(recompile_limit=1):
        for n in (3, 5):  # two layouts, one optimizer each
            p = torch.nn.Parameter(torch.ones(n, dtype=torch.float64))
            opt = ChainerNesterovAG([p], lr=0.1, weight_decay=5e-4)
            p.grad = torch.ones(n, dtype=torch.float64)
            opt.step()
            assert p.detach().tolist() == pytest.approx([1.0 - 2.71 * 0.1 * (1.0 + 5e-4)] * n, rel=1e-12)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])  # the second compiled too
    assert torch._dynamo.config.recompile_limit == limit  # restored for the tests after this one
