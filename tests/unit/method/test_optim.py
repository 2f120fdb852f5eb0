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
