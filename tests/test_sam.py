"""SAM against a textbook implementation written out here (the reference's sam.py, davda54/sam).

The reference: g = grad of the loss at w; e = rho g / (||g|| + 1e-12) with the norm over ALL
parameters (adaptive: e = rho w^2 g / (||w g|| + 1e-12)); gradient g' at w + e; restore w; then SGD
with momentum and weight decay on the restored w: buf = momentum buf + (g' + wd w) (first step
buf = g' + wd w), w -= lr buf. Everything runs in float64 on a tiny model.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from ltsam.optim.sam import SAM
from tests.tolerances import rtol

LR, MOMENTUM, WD = 0.1, 0.9, 5e-3
# SAM against the textbook step: the same values summed in other orders (fused norms and updates vs. the
# hand loss and norm). Longest sum: the gradient norm over the 14 parameters (the batch has 8 samples);
# stages per step: two forward and backward passes through 2 layers and the loss, the norm, the update;
# up to 3 steps. Weights are of order one, so the bound serves as atol.
SAM_ATOL = rtol(torch.float64, n=14, stages=3 * 12)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()


def _batch():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=g)
    return x, y


def _hand_loss(ws: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = ws
    z = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    lse = torch.logsumexp(z, dim=1)
    return (lse - z[torch.arange(len(y)), y]).mean()


def _hand_grads(ws, x, y):
    ws = [w.detach().clone().requires_grad_(True) for w in ws]
    return [g.detach() for g in torch.autograd.grad(_hand_loss(ws, x, y), ws)]


def _hand_sam(ws, bufs, x, y, rhos, adaptive, lr=LR, momentum=MOMENTUM, wd=WD):
    """One textbook SAM+SGD step. ``rhos`` gives each parameter's rho (its group's)."""
    g = _hand_grads(ws, x, y)
    if adaptive:
        norm = torch.sqrt(sum(((w * gi) ** 2).sum() for w, gi in zip(ws, g, strict=True)))
        e = [r * w * w * gi / (norm + 1e-12) for r, w, gi in zip(rhos, ws, g, strict=True)]
    else:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        e = [r * gi / (norm + 1e-12) for r, gi in zip(rhos, g, strict=True)]
    g2 = _hand_grads([w + ei for w, ei in zip(ws, e, strict=True)], x, y)
    new_ws, new_bufs = [], []
    for w, gi, b in zip(ws, g2, bufs, strict=True):
        d = gi + wd * w
        b = d.clone() if b is None else momentum * b + d
        new_ws.append(w - lr * b)
        new_bufs.append(b)
    return new_ws, new_bufs


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _sam_step(model, opt, x, y):
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)
    loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_textbook(adaptive):
    x, y = _batch()
    model = _model()
    ws = _params(model)
    bufs = [None] * len(ws)
    rho = 0.5 if adaptive else 0.05
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=LR,
              momentum=MOMENTUM, weight_decay=WD)
    for _ in range(3):
        _sam_step(model, opt, x, y)
        ws, bufs = _hand_sam(ws, bufs, x, y, [rho] * 4, adaptive)
        for p, w in zip(model.parameters(), ws, strict=True):
            torch.testing.assert_close(p.detach(), w, atol=SAM_ATOL, rtol=0)
    # the perturbation really matters: plain SGD would end elsewhere
    sgd = _model()
    plain = torch.optim.SGD(sgd.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for _ in range(3):
        plain.zero_grad()
        nn.CrossEntropyLoss()(sgd(x), y).backward()
        plain.step()
    diff = max(float((p - q).detach().abs().max())
               for p, q in zip(sgd.parameters(), model.parameters(), strict=True))
    assert diff > 1e-5


def test_closure_step_equals_first_second_step():
    x, y = _batch()
    a, b = _model(), _model()
    kw = dict(rho=0.1, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    opt_a = SAM(a.parameters(), torch.optim.SGD, **kw)
    opt_b = SAM(b.parameters(), torch.optim.SGD, **kw)
    loss_fn = nn.CrossEntropyLoss()

    def closure():
        loss = loss_fn(b(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        _sam_step(a, opt_a, x, y)
        opt_b.zero_grad()
        loss_fn(b(x), y).backward()  # the first gradient, as in davda54/sam
        loss = opt_b.step(closure)
        assert isinstance(loss, torch.Tensor)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


def test_step_without_closure_raises():
    model = _model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=LR)
    with pytest.raises((ValueError, AssertionError)):
        opt.step()


def test_param_group_rho_with_global_norm():
    x, y = _batch()
    model = _model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = SAM([{"params": first, "rho": 0.3}, {"params": second}], torch.optim.SGD, rho=0.05,
              lr=LR, momentum=MOMENTUM, weight_decay=WD)
    assert [g["rho"] for g in opt.param_groups] == [0.3, 0.05]
    ws = _params(model)
    bufs = [None] * 4
    for _ in range(2):
        _sam_step(model, opt, x, y)
        ws, bufs = _hand_sam(ws, bufs, x, y, [0.3, 0.3, 0.05, 0.05], adaptive=False)
        for p, w in zip(model.parameters(), ws, strict=True):
            torch.testing.assert_close(p.detach(), w, atol=SAM_ATOL, rtol=0)


def test_param_group_norm_is_global_not_per_group():
    # A per-group norm would give a different perturbation; make sure we would notice.
    x, y = _batch()
    ws = _params(_model())
    g = _hand_grads(ws, x, y)
    n_global = torch.sqrt(sum((gi**2).sum() for gi in g))
    n_first = torch.sqrt(sum((gi**2).sum() for gi in g[:2]))
    assert abs(float(n_global - n_first)) > 1e-3

    model = _model()
    opt = SAM([{"params": list(model[0].parameters()), "rho": 0.3},
               {"params": list(model[2].parameters())}], torch.optim.SGD, rho=0.05, lr=LR)
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.first_step(zero_grad=True)
    for p, w, gi, r in zip(model.parameters(), ws, g, [0.3, 0.3, 0.05, 0.05], strict=True):
        torch.testing.assert_close(p.detach(), w + r * gi / (n_global + 1e-12), atol=SAM_ATOL, rtol=0)
    opt.second_step(zero_grad=True)


def test_rho_read_at_each_first_step():
    x, y = _batch()
    model = _model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=LR, momentum=MOMENTUM,
              weight_decay=WD)
    ws = _params(model)
    bufs = [None] * 4
    for rho in (0.05, 0.5, 0.0):
        for group in opt.param_groups:
            group["rho"] = rho
        _sam_step(model, opt, x, y)
        ws, bufs = _hand_sam(ws, bufs, x, y, [rho] * 4, adaptive=False)
        for p, w in zip(model.parameters(), ws, strict=True):
            torch.testing.assert_close(p.detach(), w, atol=SAM_ATOL, rtol=0)


def test_lr_change_on_sam_groups_reaches_base_optimizer():
    x, y = _batch()
    model = _model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=LR, momentum=MOMENTUM,
              weight_decay=WD)
    ws = _params(model)
    bufs = [None] * 4
    for lr in (0.1, 0.02):
        for group in opt.param_groups:
            group["lr"] = lr
        _sam_step(model, opt, x, y)
        ws, bufs = _hand_sam(ws, bufs, x, y, [0.05] * 4, adaptive=False, lr=lr)
    for p, w in zip(model.parameters(), ws, strict=True):
        torch.testing.assert_close(p.detach(), w, atol=SAM_ATOL, rtol=0)


def test_first_step_restores_exactly():
    x, y = _batch()
    model = _model()
    before = _params(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert any(not torch.equal(p, w) for p, w in zip(model.parameters(), before, strict=True))
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.second_step(zero_grad=True)  # lr 0: the restored weights stay
    for p, w in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, w)


@pytest.mark.parametrize("via_bytes", [True, False])
def test_state_dict_round_trip_restores_momentum(via_bytes):
    x, y = _batch()
    kw = dict(rho=0.1, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    orig = _model()
    opt = SAM(orig.parameters(), torch.optim.SGD, **kw)
    for _ in range(2):
        _sam_step(orig, opt, x, y)
    for group in opt.param_groups:
        group["rho"] = 0.2

    sd = opt.state_dict()
    if via_bytes:  # as a checkpoint on disk
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
    else:
        sd = copy.deepcopy(sd)
    momentum = [s["momentum_buffer"] for s in sd["state"].values()]
    assert len(momentum) == 4 and all(m is not None for m in momentum)

    copy_model = _model(seed=99)
    copy_model.load_state_dict(orig.state_dict())
    opt2 = SAM(copy_model.parameters(), torch.optim.SGD, **kw)
    opt2.load_state_dict(sd)
    assert [g["rho"] for g in opt2.param_groups] == [0.2]
    for _ in range(2):
        _sam_step(orig, opt, x, y)
        _sam_step(copy_model, opt2, x, y)
    for p, q in zip(orig.parameters(), copy_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_without_momentum_would_differ():
    x, y = _batch()
    kw = dict(rho=0.1, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    a = _model()
    opt_a = SAM(a.parameters(), torch.optim.SGD, **kw)
    _sam_step(a, opt_a, x, y)
    b = _model(seed=5)
    b.load_state_dict(a.state_dict())
    opt_b = SAM(b.parameters(), torch.optim.SGD, **kw)  # momentum restarts from zero
    _sam_step(a, opt_a, x, y)
    _sam_step(b, opt_b, x, y)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("adaptive", [False, True])
def test_asam_step_is_adaptive_whatever_adaptive_says(adaptive):
    """``--optimizer asam`` perturbs as ASAM with or without --adaptive; ``sam`` only with it."""
    from ltsam.optim import StepSettings, build_step

    for name, expected in (("asam", True), ("sam", adaptive)):
        step = build_step(name, nn.Linear(2, 2).parameters(),
                          StepSettings(lr=0.1, momentum=0.9, wd=0.0, adaptive=adaptive))
        assert [g["adaptive"] for g in step.optimizer.param_groups] == [expected]
