"""GLMC: weights, mixing, heads, losses, the SGD/SAM step and the paired batch source.

Expected values are computed here by hand (closed forms written out in the test), not by the code
under test. Tolerances are derived in tests/tolerances.py; the steps are checked in float64.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltsam.glmc import (
    GLMCBatchSource,
    GLMCNet,
    GLMCUpdate,
    box_from_centre,
    build_glmc_model,
    cumulative_alpha,
    cutmix,
    cutmix_box,
    glmc_losses,
    glmc_resnet32_wide,
    glmc_resnet34_cifar,
    label_weights,
    mix_targets,
    mixup,
    negative_cosine,
    resample_weights,
    sample_lambda,
    sample_weights,
    wrap_backbone,
)
from ltsam.models import SmallCNN, build_model
from ltsam.optim.sam import SAM
from tests.tolerances import rtol

DT = torch.float64
# float32 mixtures and weights against the float64 hand values: two products and a sum, each rounded.
MIX32 = rtol(torch.float32, n=2, stages=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP spin-waits make them ~50x slower on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- weights and alpha
def test_label_weights_match_spec_values():
    counts = [int(5000 * 0.02 ** (c / 9)) for c in range(10)]
    assert counts == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    w = label_weights(counts, 1.2)
    spec = [0.0373, 0.0629, 0.1059, 0.1785, 0.3010, 0.5076, 0.8545, 1.4415, 2.4304, 4.0805]
    assert w.dtype == torch.float32 and w.shape == (10,)
    # The spec prints 4 decimals (half a unit of the last, 5e-5), w is float32 (one rounding of values <= 4.1)
    torch.testing.assert_close(w, torch.tensor(spec), rtol=0, atol=0.5e-4 + rtol(torch.float32) * 4.1)
    assert float(w.sum()) == pytest.approx(10.0, rel=rtol(torch.float32, n=10))  # 10 rounded terms, summed


def test_resample_weights():
    counts = [8, 4, 2]
    assert torch.equal(resample_weights(counts, 0.0), torch.ones(3, dtype=torch.float64))  # n^0 = 1: exact
    # q = 1: (1/8, 1/4, 1/2) / (7/8) * 3; a power, a 3-term sum, a division and a product in float64
    expected = torch.tensor([1 / 8, 1 / 4, 1 / 2], dtype=torch.float64) / (7 / 8) * 3
    tol = dict(rtol=rtol(DT, n=3, stages=4), atol=0)
    torch.testing.assert_close(resample_weights(counts, 1.0), expected, **tol)
    targets = torch.tensor([2, 0, 1, 0])
    torch.testing.assert_close(sample_weights(targets, counts, 1.0), expected[[2, 0, 1, 0]], **tol)
    with pytest.raises(ValueError):
        resample_weights([3, 0], 1.0)


def test_cumulative_alpha():
    assert cumulative_alpha(0, 200) == 1.0
    # 1 - (e / E)^2 in float64: a division, a square and a subtraction of terms <= 1 (absolute: it cancels)
    tol = dict(rel=0, abs=rtol(DT, stages=3))
    assert cumulative_alpha(100, 200) == pytest.approx(0.75, **tol)
    assert cumulative_alpha(199, 200) == pytest.approx(0.009975, **tol)
    assert cumulative_alpha(5, 10) == pytest.approx(0.75, **tol)


# --------------------------------------------------------------------------- mixing
def test_mixup_and_soft_targets():
    a = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([[3.0, -2.0]])
    # atol: MIX32 times the size of the terms (|0.75 * 3| < 3, targets <= 1, weighted targets <= 1.5)
    torch.testing.assert_close(mixup(a, b, 0.25), torch.tensor([[0.25 * 1 + 0.75 * 3, 0.25 * 2 - 0.75 * 2]]),
                               rtol=MIX32, atol=3 * MIX32)
    y_a, y_b = torch.tensor([0, 2, 1]), torch.tensor([2, 2, 0])
    lam = 0.3
    soft = mix_targets(y_a, y_b, lam, 3)
    torch.testing.assert_close(soft, torch.tensor([[0.3, 0.0, 0.7], [0.0, 0.0, 1.0], [0.7, 0.3, 0.0]]),
                               rtol=MIX32, atol=MIX32)
    w = torch.tensor([0.5, 1.0, 1.5])
    weighted = mix_targets(y_a, y_b, lam, 3, w)
    hand = torch.tensor([[0.3 * 0.5, 0.0, 0.7 * 1.5], [0.0, 0.0, 1.5], [0.7 * 0.5, 0.3 * 1.0, 0.0]])
    torch.testing.assert_close(weighted, hand, rtol=MIX32, atol=1.5 * MIX32)


@pytest.mark.parametrize(("h", "w", "lam", "centre", "box"), [
    # sqrt(0.25) = 0.5 -> k = 4, half 2: rows [-2, 2) -> [0, 2), cols [5, 9) -> [5, 8)
    (8, 8, 0.75, (0, 7), (0, 2, 5, 8)),
    # 32 * sqrt(0.7) = 26.77 -> k = 27, half 13: rows [3, 29), cols [-10, 16) -> [0, 16)
    (32, 32, 0.3, (16, 3), (3, 29, 0, 16)),
    # lam = 0: k = S, half S // 2; the odd side 7 gives a 6-pixel box (2 * (k // 2))
    (32, 7, 0.0, (16, 3), (0, 32, 0, 6)),
    # lam = 1: k = 0, empty box
    (8, 8, 1.0, (4, 4), (4, 4, 4, 4)),
    # non-square: h = 6, w = 10, lam = 0.64 -> sqrt(0.36) = 0.6: kh = ceil(3.6) = 4, kw = 6
    (6, 10, 0.64, (5, 1), (3, 6, 0, 4)),
])
def test_box_from_centre_by_hand(h, w, lam, centre, box):
    assert box_from_centre(h, w, lam, *centre) == box


def test_cutmix_box_centres_cover_the_image():
    g = torch.Generator().manual_seed(0)
    rows, cols = set(), set()
    for _ in range(300):
        # lam = 0.99: k = ceil(S * 0.1) = 1, half 0 -> the empty box [c, c) sits at the centre itself
        r0, r1, c0, c1 = cutmix_box(5, 4, 0.99, g)
        assert r0 == r1 and c0 == c1
        rows.add(r0)
        cols.add(c0)
    assert rows == {0, 1, 2, 3, 4}
    assert cols == {0, 1, 2, 3}
    # the same generator state gives the same box
    s = g.get_state()
    first = cutmix_box(32, 32, 0.4, g)
    g.set_state(s)
    assert cutmix_box(32, 32, 0.4, g) == first


def test_cutmix_pixels_exact_and_inputs_untouched():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    a0, b0 = a.clone(), b.clone()
    out = cutmix(a, b, (0, 2, 5, 8))
    assert torch.equal(a, a0) and torch.equal(b, b0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    for r in range(8):
        for c in range(8):
            mask[r, c] = r < 2 and c >= 5
    assert int(mask.sum()) == 6
    assert torch.equal(out[:, :, mask], b[:, :, mask])
    assert torch.equal(out[:, :, ~mask], a[:, :, ~mask])


def test_sample_lambda():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draws = [sample_lambda(g1) for _ in range(50)]
    assert draws == [sample_lambda(g2) for _ in range(50)]
    assert all(0.0 <= x < 1.0 for x in draws) and len(set(draws)) == 50
    # beta = 1 is Uniform(0, 1): the same value as one float64 torch.rand draw
    g3 = torch.Generator().manual_seed(3)
    assert draws[0] == float(torch.rand((), generator=g3, dtype=torch.float64))
    g4, g5 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    b = [sample_lambda(g4, 0.5) for _ in range(20)]
    assert b == [sample_lambda(g5, 0.5) for _ in range(20)]
    assert all(0.0 <= x <= 1.0 for x in b)
    with pytest.raises(ValueError):
        sample_lambda(g4, 0.0)


# --------------------------------------------------------------------------- losses
def _hand_ce(logits, soft):
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(soft * logp).sum(dim=1).mean()


def _hand_sim(p, z):
    z = z.detach()
    cos = (p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))
    return -cos.mean()


def test_total_loss_formula():
    g = torch.Generator().manual_seed(1)
    n, c, h = 5, 4, 6
    outs = [tuple(torch.randn(n, d, generator=g, dtype=torch.float64) for d in (c, c, h, h)) for _ in range(2)]
    ys = [torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64), 1) for _ in range(4)]
    alpha, cw = 0.36, 2.5
    parts = glmc_losses(outs[0], outs[1], *ys, alpha=alpha, contrast_weight=cw)
    bal = _hand_ce(outs[0][0], ys[0]) + _hand_ce(outs[1][0], ys[2])
    reb = _hand_ce(outs[0][1], ys[1]) + _hand_ce(outs[1][1], ys[3])
    con = _hand_sim(outs[0][3], outs[1][2]) + _hand_sim(outs[1][3], outs[0][2])
    # float64, other orders (soft cross-entropy, cosine): sums over <= 6 entries; stages: log-sum-exp, the row
    # sum, the batch mean, the two-view sum and the combination. atol: the size of the combined terms.
    bound = rtol(DT, n=6, stages=6)
    tol = dict(rtol=bound, atol=bound * float(bal.abs() + reb.abs() + cw * con.abs()))
    cls = alpha * bal + (1 - alpha) * reb
    for got, want in ((parts.bal, bal), (parts.reb, reb), (parts.con, con), (parts.cls, cls),
                      (parts.total, cls + cw * con)):
        torch.testing.assert_close(got, want, **tol)


def test_consistency_gradient_only_through_p():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    proj, pred = nn.Linear(5, 4), nn.Linear(5, 4)
    negative_cosine(pred(x), proj(x)).backward()
    assert proj.weight.grad is None and proj.bias.grad is None
    assert pred.weight.grad is not None and float(pred.weight.grad.abs().sum()) > 0
    # through glmc_losses: L_con reaches p_mix, p_cut but neither z
    leaves = [torch.randn(6, 4, requires_grad=True) for _ in range(8)]
    out_mix, out_cut = tuple(leaves[:4]), tuple(leaves[4:])
    y = torch.full((6, 4), 0.25)
    glmc_losses(out_mix, out_cut, y, y, y, y, alpha=0.5, contrast_weight=1.0).con.backward()
    z_mix, p_mix, z_cut, p_cut = leaves[2], leaves[3], leaves[6], leaves[7]
    assert z_mix.grad is None and z_cut.grad is None
    assert float(p_mix.grad.abs().sum()) > 0 and float(p_cut.grad.abs().sum()) > 0
    assert all(t.grad is None for t in (leaves[0], leaves[1], leaves[4], leaves[5]))


# --------------------------------------------------------------------------- networks
class _TinyBackbone(nn.Module):
    def __init__(self, in_features: int = 16, d: int = 5):
        super().__init__()
        self.body = nn.Linear(in_features, d)
        self.feature_dim = d

    def features(self, x):
        return torch.tanh(self.body(x.flatten(1)))


def test_glmcnet_train_and_eval_outputs():
    """The wiring of the heads. The hand computation applies the same linear maps (F.linear, what nn.Linear
    runs) to the same tensors, so the outputs are equal bit for bit."""
    torch.manual_seed(0)
    net = GLMCNet(_TinyBackbone(), 3, proj_dim=4)
    x = torch.randn(7, 1, 4, 4)
    net.train()
    fc, cb, z, p = net(x)
    f = torch.tanh(F.linear(x.flatten(1), net.backbone.body.weight, net.backbone.body.bias))
    assert torch.equal(fc, F.linear(f, net.fc.weight, net.fc.bias))
    assert torch.equal(cb, F.linear(f, net.fc_cb.weight, net.fc_cb.bias))
    z_hand = F.linear(f, net.projection_head.weight, net.projection_head.bias)
    assert torch.equal(z, z_hand)
    assert torch.equal(p, F.linear(z_hand, net.contrast_head.weight, net.contrast_head.bias))
    assert not torch.equal(fc, cb) and not torch.equal(z, p)  # four different heads
    net.eval()
    out = net(x)
    assert isinstance(out, torch.Tensor) and torch.equal(out, cb)
    assert torch.equal(net.predict(x), cb)


def test_wrap_backbone_and_registry():
    net = wrap_backbone(build_model("resnet20", 4), 4)
    assert isinstance(net.backbone.linear, nn.Identity)
    assert (net.feature_dim, net.proj_dim) == (64, 32)
    assert net.projection_head.weight.shape == (32, 64) and net.contrast_head.weight.shape == (32, 32)
    small = build_glmc_model("small_cnn", 3, in_channels=1)
    assert small.fc_cb.out_features == 3
    from ltsam.errors import UserError
    with pytest.raises(UserError):
        build_glmc_model("nope", 3)


def test_reference_glmc_architectures():
    with torch.device("meta"):  # structure only: skip initialising 21M parameters
        r34 = glmc_resnet34_cifar(10)
    assert (r34.feature_dim, r34.proj_dim) == (512, 256)
    assert r34.fc.weight.shape == (10, 512) and r34.contrast_head.weight.shape == (256, 256)
    convs = [m for m in r34.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 16 + 3  # stem, 16 blocks, three 1x1 projection shortcuts
    assert sum(1 for m in convs if m.kernel_size == (1, 1)) == 3
    assert convs[0].stride == (1, 1) and not any(isinstance(m, nn.MaxPool2d) for m in r34.modules())
    r32 = glmc_resnet32_wide(100)
    assert (r32.feature_dim, r32.proj_dim) == (256, 128)
    convs = [m for m in r32.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and [c.out_channels for c in convs[::10]] == [64, 64, 128, 256]
    r32.eval()
    with torch.no_grad():
        assert r32(torch.randn(2, 3, 8, 8)).shape == (2, 100)


# --------------------------------------------------------------------------- the step
def _views(seed: int, n: int = 6, num_classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64),
         torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64),
         torch.randint(0, num_classes, (n,), generator=g))
    b = (torch.randn(n + 2, 1, 4, 4, generator=g, dtype=torch.float64),
         torch.randn(n + 2, 1, 4, 4, generator=g, dtype=torch.float64),
         torch.randint(0, num_classes, (n + 2,), generator=g))
    return a, b


def _tiny_net(seed: int = 0) -> GLMCNet:
    torch.manual_seed(seed)
    return GLMCNet(_TinyBackbone(), 3, proj_dim=4).double().train()


def _hand_parts(net, m):
    """(alpha-free) L_bal, L_reb, L_con of a mixed batch, by hand."""
    fm, cm, zm, pm = net.forward_all(m.x_mix)
    fc_, cc, zc, pc = net.forward_all(m.x_cut)
    bal = _hand_ce(fm, m.y_mix) + _hand_ce(fc_, m.y_cut)
    reb = _hand_ce(cm, m.y_mix_w) + _hand_ce(cc, m.y_cut_w)
    con = _hand_sim(pm, zc) + _hand_sim(pc, zm)
    return bal, reb, con


def _step_bound(net) -> float:
    """The float64 step against the hand formulas: the same losses and gradients summed in other orders
    (soft cross-entropy vs. log-sum-exp by hand, autograd's accumulation, SAM's gradient norm). Longest sum:
    the norm over all parameters; stages: two forwards and their backward through the 3 layers and the loss,
    the norm, the update. Parameters, gradients and losses are of order one: the bound is rtol and atol."""
    return rtol(DT, n=sum(p.numel() for p in net.parameters()), stages=16)


def _grads(net, loss):
    params = list(net.parameters())
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def test_mix_truncates_b_and_uses_same_lambda_for_both_mixtures():
    a, b = _views(0)
    w = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    opt = torch.optim.SGD(_tiny_net().parameters(), lr=0.1)
    step = GLMCUpdate(opt, w, 3, 1.0, torch.Generator().manual_seed(5), use_sam=False)
    m = step.mix(a, b)
    lam = m.lam
    assert torch.equal(m.x_mix, lam * a[0] + (1 - lam) * b[0][:6])  # the same float64 expression
    r0, r1, c0, c1 = m.box
    expected_cut = a[1].clone()
    expected_cut[:, :, r0:r1, c0:c1] = b[1][:6, :, r0:r1, c0:c1]
    assert torch.equal(m.x_cut, expected_cut)
    onehot = torch.eye(3, dtype=torch.float64)
    # float32 targets against float64 hand values (weights <= 1.5)
    torch.testing.assert_close(m.y_mix.double(), lam * onehot[a[2]] + (1 - lam) * onehot[b[2][:6]],
                               rtol=MIX32, atol=MIX32)
    torch.testing.assert_close(m.y_mix_w.double(), lam * w * onehot[a[2]] + (1 - lam) * w * onehot[b[2][:6]],
                               rtol=MIX32, atol=1.5 * MIX32)
    assert torch.equal(m.y_cut, m.y_mix) and torch.equal(m.y_cut_w, m.y_mix_w)


def test_sgd_step_descends_the_full_loss():
    a, b = _views(1)
    net = _tiny_net()
    w = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    alpha, cw, lr = 0.6, 3.0, 0.1
    gen = torch.Generator().manual_seed(7)
    step = GLMCUpdate(torch.optim.SGD(net.parameters(), lr=lr), w, 3, cw, gen, use_sam=False)
    ref = copy.deepcopy(net)
    state = gen.get_state()
    out = step(net, a, b, alpha)
    gen.set_state(state)
    m = step.mix(a, b)
    bal, reb, con = _hand_parts(ref, m)
    g = _grads(ref, alpha * bal + (1 - alpha) * reb + cw * con)
    bound = _step_bound(net)
    for p_new, p_old, gi in zip(net.parameters(), ref.parameters(), g):
        torch.testing.assert_close(p_new, p_old - lr * gi, rtol=bound, atol=bound)
    torch.testing.assert_close(out["loss"], (alpha * bal + (1 - alpha) * reb).detach(), rtol=bound, atol=bound)
    assert out["logits"].shape == (6, 3) and torch.equal(out["targets"], a[2])


def test_sam_ascent_uses_classification_losses_only():
    a, b = _views(2)
    net = _tiny_net(1)
    w = torch.tensor([0.2, 0.8, 2.0], dtype=torch.float64)
    alpha, cw, lr, rho = 0.7, 5.0, 0.1, 0.05
    opt = SAM(net.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    gen = torch.Generator().manual_seed(11)
    step = GLMCUpdate(opt, w, 3, cw, gen, use_sam=True)
    ref = copy.deepcopy(net)

    captured = {}
    original_first_step = opt.first_step

    def spy(*args, **kwargs):
        before = [p.detach().clone() for p in net.parameters()]
        original_first_step(*args, **kwargs)
        captured["e"] = [p.detach() - q for p, q in zip(net.parameters(), before)]

    opt.first_step = spy
    state = gen.get_state()
    out = step(net, a, b, alpha)
    gen.set_state(state)
    m = step.mix(a, b)

    bal, reb, con = _hand_parts(ref, m)
    g_cls = _grads(ref, alpha * bal + (1 - alpha) * reb)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g_cls))
    expected_e = [rho * gi / (norm + 1e-12) for gi in g_cls]
    bound = _step_bound(net)
    for e, ee in zip(captured["e"], expected_e):
        torch.testing.assert_close(e, ee, rtol=bound, atol=bound * rho)  # |e| <= rho
    # the heads that only L_con reaches are not perturbed
    head_params = {id(p) for p in list(net.projection_head.parameters()) + list(net.contrast_head.parameters())}
    for p, e in zip(net.parameters(), captured["e"]):
        if id(p) in head_params:
            assert float(e.abs().max()) == 0.0
    # ... and the full-loss direction (with cw L_con) is measurably different
    bal, reb, con = _hand_parts(ref, m)
    g_full = _grads(ref, alpha * bal + (1 - alpha) * reb + cw * con)
    full_norm = torch.sqrt(sum((gi ** 2).sum() for gi in g_full))
    diff = sum(float((e - rho * gi / full_norm).abs().sum()) for e, gi in zip(captured["e"], g_full))
    assert diff > 1e-4

    # descent: the full loss's gradient at w + e, applied at w (plain SGD, no momentum)
    perturbed = copy.deepcopy(ref)
    with torch.no_grad():
        for p, e in zip(perturbed.parameters(), expected_e):
            p.add_(e)
    bal2, reb2, con2 = _hand_parts(perturbed, m)
    g2 = _grads(perturbed, alpha * bal2 + (1 - alpha) * reb2 + cw * con2)
    for p_new, p_old, gi in zip(net.parameters(), ref.parameters(), g2):
        torch.testing.assert_close(p_new, p_old - lr * gi, rtol=bound, atol=bound)
    # logged: the first pass's alpha L_bal + (1 - alpha) L_reb
    torch.testing.assert_close(out["loss"], (alpha * bal + (1 - alpha) * reb).detach(), rtol=bound, atol=bound)


def test_reseed_makes_mixing_reproducible():
    a, b = _views(3)
    opt = torch.optim.SGD(_tiny_net().parameters(), lr=0.1)
    step = GLMCUpdate(opt, torch.ones(3), 3, 1.0, torch.Generator(), use_sam=False)
    step.reseed(7, 4)
    m1 = step.mix(a, b)
    step.mix(a, b)
    step.reseed(7, 4)
    m2 = step.mix(a, b)
    assert (m1.lam, m1.box) == (m2.lam, m2.box) and torch.equal(m1.x_cut, m2.x_cut)
    step.reseed(7, 5)
    assert step.mix(a, b).lam != m1.lam


def test_step_checks_its_optimizer():
    net = _tiny_net()
    w = torch.ones(3)
    with pytest.raises(TypeError):
        GLMCUpdate(torch.optim.SGD(net.parameters(), lr=0.1), w, 3, 1.0, torch.Generator(), use_sam=True)
    with pytest.raises(TypeError):
        GLMCUpdate(SAM(net.parameters(), torch.optim.SGD, lr=0.1), w, 3, 1.0, torch.Generator(), use_sam=False)


# --------------------------------------------------------------------------- the batch source
def _dataset(counts, size=4):
    n = sum(counts)
    assert n < 255
    images = torch.arange(1, n + 1, dtype=torch.uint8)[:, None, None, None].expand(n, 3, size, size).contiguous()
    targets = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    return images, targets


MEAN, STD = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])


def _source(images, targets, **kw):
    args = dict(batch_size=8, mean=MEAN, std=STD, pad=1, flip=True, seed=3)
    args.update(kw)
    return GLMCBatchSource(images, targets, **args)


def _decode(x):
    """The dataset index of each view (image i is filled with i + 1; zero padding only adds zeros)."""
    return (x.amax(dim=(1, 2, 3)) * 255).round().long() - 1


def test_source_is_deterministic_and_gives_two_views():
    images, targets = _dataset([20, 10, 6, 4])
    src = _source(images, targets)
    assert len(src) == 5
    src.set_epoch(2)
    first = list(src)
    again = list(_with_epoch(_source(images, targets), 2))  # a fresh source: same (seed, epoch) batches
    for (a, b), (a2, b2) in zip(first, again):
        for t, u in zip(a + b, a2 + b2):
            assert torch.equal(t, u)
    src.set_epoch(3)
    other = list(src)
    assert any(not torch.equal(x[0][0], y[0][0]) for x, y in zip(first, other))
    seen = []
    some_views_differ = False
    for (a1, a2, ya), (b1, b2, yb) in first:
        assert a1.shape == a2.shape and b1.shape == a1.shape and len(yb) == len(ya)
        ia, ib = _decode(a1), _decode(b1)
        assert torch.equal(ia, _decode(a2)) and torch.equal(ib, _decode(b2))
        assert torch.equal(targets[ia], ya) and torch.equal(targets[ib], yb)
        some_views_differ |= not torch.equal(a1, a2)
        seen.append(ia)
    assert some_views_differ
    assert sorted(torch.cat(seen).tolist()) == list(range(40))  # A is a permutation of the training set


def _with_epoch(src, epoch):
    src.set_epoch(epoch)
    return src


def b_class_frequencies(src, epochs: int, num_classes: int) -> torch.Tensor:
    """How often each class appears in a paired source's B stream over ``epochs`` epochs (fractions)."""
    drawn = torch.zeros(num_classes)
    for epoch in range(epochs):
        src.set_epoch(epoch)
        for _, (_, _, yb) in src:
            drawn += torch.bincount(yb, minlength=num_classes)
    return drawn / drawn.sum()


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_source_b_follows_the_resampling_weights(q):
    counts = [120, 60, 40, 20]
    images, targets = _dataset(counts, size=2)
    src = _source(images, targets, batch_size=48, resample_q=q, pad=0, flip=False)
    epochs = 6
    freq = b_class_frequencies(src, epochs=epochs, num_classes=4)
    n = torch.tensor(counts, dtype=torch.float64)
    expected = n * n ** (-q)
    expected = expected / expected.sum()
    # Statistical tolerance: the B stream draws N i.i.d. indices (with replacement), so each class's frequency
    # is a binomial proportion with standard error sqrt(p (1 - p) / N); allow four of them.
    draws = epochs * len(targets)  # each epoch's A stream takes len(targets) B samples
    four_se = 4 * (expected * (1 - expected) / draws).sqrt()
    assert ((freq.double() - expected).abs() <= four_se).all(), (freq, expected, four_se)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("use_sam", [False, True])
def test_few_glmc_steps_end_to_end(use_sam):
    torch.manual_seed(0)
    counts = [24, 12, 8, 4]
    images, targets = _dataset(counts, size=8)
    # class-dependent colour so the task is learnable
    images = images.clone()
    images[:, 0] = (targets * 60)[:, None, None].to(torch.uint8)
    src = _source(images, targets, batch_size=16, resample_q=0.5)
    net = wrap_backbone(SmallCNN(4, in_channels=3, width=8), 4)
    before = [p.detach().clone() for p in net.parameters()]
    kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-3)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, **kw) if use_sam else torch.optim.SGD(net.parameters(), **kw)
    step = GLMCUpdate(opt, label_weights(counts, 1.2), 4, 1.0, torch.Generator(), use_sam=use_sam)
    losses = []
    epochs = 2
    for epoch in range(epochs):
        src.set_epoch(epoch)
        step.reseed(0, epoch)
        net.train()
        for batch_a, batch_b in src:
            out = step(net, batch_a, batch_b, cumulative_alpha(epoch, epochs))
            assert math.isfinite(float(out["loss"])) and math.isfinite(float(out["total"]))
            losses.append(float(out["loss"]))
    changed = sum(float((p.detach() - q).abs().sum()) for p, q in zip(net.parameters(), before))
    assert changed > 0
    net.eval()
    with torch.no_grad():
        logits = net(torch.zeros(2, 3, 8, 8))
    assert logits.shape == (2, 4)


@pytest.mark.parametrize("use_sam", [False, True])
def test_step_through_grad_scaler_equals_unscaled(use_sam):
    """fp16 loss scaling (here on fp32): scaling the backward passes by 2^10 and unscaling before the update
    gives the unscaled step's weights bit for bit, for SGD and for GLMC's SAM step. Multiplying by 2^10 and
    2^-10 is exact and commutes with every rounding in between (no overflow or subnormals here), and SAM's
    ascent rho g / (||g|| + 1e-12) is invariant to the common scale (the 1e-12 is far below an ulp of ||g||)."""
    counts = [24, 12, 8, 4]
    images, targets = _dataset(counts, size=8)
    src = _source(images, targets, batch_size=16, resample_q=0.5)
    nets = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        torch.manual_seed(0)
        net = wrap_backbone(SmallCNN(4, in_channels=3, width=8), 4)
        kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-3)
        opt = (SAM(net.parameters(), torch.optim.SGD, rho=0.05, **kw) if use_sam
               else torch.optim.SGD(net.parameters(), **kw))
        step = GLMCUpdate(opt, label_weights(counts, 1.2), 4, 1.0, torch.Generator().manual_seed(1), use_sam=use_sam,
                        scaler=scaler)
        src.set_epoch(0)
        net.train()
        for batch_a, batch_b in src:
            step(net, batch_a, batch_b, 0.7)
        nets.append(net)
        if scaler is not None:
            assert scaler.get_scale() == 2.0**10  # no overflow, no skipped step
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)
