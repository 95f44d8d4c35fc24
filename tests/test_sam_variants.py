"""Imbalance-aware SAM (ImbSAM, Focal-SAM, SSE-SAM, CC-SAM) against an independent computation.

Each variant's update is worked out here from its formula: the split losses built by hand from the network's
logits (``torch.func.functional_call`` at explicit weights), gradients by autograd at w and at the perturbed
weights, e = rho g / (||g|| + 1e-12) (adaptive: rho w^2 g / (||w g|| + 1e-12)) and the SGD step with momentum
and weight decay. The step under test runs through the methods' own objectives: ERM's
``supervised_objective`` (weighted CE, per-sample losses from the loss module) and GLMC's ``GLMCUpdate``
(MixUp/CutMix membership lam e_A + (1 - lam) e_B, the consistency loss at w).

ERM's objective rounds the logits to float32 for the loss (the other computations are float64): its
comparisons use a float32 bound, the longest float32 sum being the batch mean (B = 12 terms) over at most 20
loss evaluations (2 steps of CC-SAM with 4 classes: 9 passes each, and the forward/backward of each). GLMC's
losses stay float64: the longest sum there is a batch of 8 images x 16 pixels, over 2 steps of up to 9 passes
of forward and backward through 3 layers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ltsam.errors import UserError
from ltsam.glmc.heads import GLMCNet
from ltsam.glmc.objective import GLMCUpdate
from ltsam.glmc.weights import label_weights
from ltsam.losses import WeightedCrossEntropy, effective_number_weights
from ltsam.objectives import supervised_objective
from ltsam.optim import STEPS, SAMStep, SGDStep, StepSettings, build_step
from ltsam.optim.frequency import SAMFrequency
from ltsam.optim.imbalance import class_radius_factors
from tests.tolerances import rtol

LR, MOMENTUM, WD, RHO = 0.1, 0.9, 5e-3, 0.3
HYPER = StepSettings(lr=LR, momentum=MOMENTUM, wd=WD, rho=RHO)  # build_step's settings
COUNTS = [60, 25, 9, 3]  # C = 4 classes; tail (n < 20): classes 2 and 3
C = len(COUNTS)
ERM_ATOL = rtol(torch.float32, n=12, stages=20)
GLMC_ATOL = rtol(torch.float64, n=8 * 16, stages=2 * 9 * 2 * 3)


class TinyNet(nn.Module):
    """Linear - tanh - Linear, the classifier named ``linear`` (as ltsam's models)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body, self.linear = nn.Linear(3, 5), nn.Linear(5, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.tanh(self.body(x)))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3])[torch.randperm(12, generator=g)]
    return torch.randn(12, 3, generator=g, dtype=torch.float64), y


# ----------------------------------------------------------------------------- the independent computation
Weights = dict[str, torch.Tensor]
Part = Callable[[Weights, torch.Tensor], torch.Tensor]  # (weights, per-class values v) -> (1/B) sum m_ik v_k p_i


def _grad(fn: Callable[[Weights], torch.Tensor], ws: Weights) -> Weights:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ws.items()}
    grads = torch.autograd.grad(fn(leaves), list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads, strict=True)}


def _ascent(ws: Weights, g: Weights, rho: float, adaptive: bool = False, only: set[str] | None = None) -> Weights:
    """w + e, e over the weights in ``only`` (all by default)."""
    keys = [k for k in ws if only is None or k in only]
    if adaptive:
        norm = torch.sqrt(sum(((ws[k] * g[k]) ** 2).sum() for k in keys))
        return {k: ws[k] + (rho * ws[k] * ws[k] * g[k] / (norm + 1e-12) if k in keys else 0) for k in ws}
    norm = torch.sqrt(sum((g[k] ** 2).sum() for k in keys))
    return {k: ws[k] + (rho * g[k] / (norm + 1e-12) if k in keys else 0) for k in ws}


def _sgd(ws: Weights, g: Weights, bufs: Weights) -> tuple[Weights, Weights]:
    new_ws, new_bufs = {}, {}
    for k in ws:
        d = g[k] + WD * ws[k]
        new_bufs[k] = d.clone() if k not in bufs else MOMENTUM * bufs[k] + d
        new_ws[k] = ws[k] - LR * new_bufs[k]
    return new_ws, new_bufs


def _add(*gs: Weights) -> Weights:
    return {k: sum(g[k] for g in gs) for k in gs[0]}


def hand_update(kind: str, ws: Weights, part: Part, extra: Callable[[Weights], torch.Tensor], classes: list[int],
                opts: dict, adaptive: bool = False, classifier: set[str] | None = None) -> Weights:
    """The variant's update direction g at ``ws`` (the module docstring of ltsam.optim.imbalance, by hand)."""
    n = torch.tensor(COUNTS, dtype=torch.float64)
    tail = (n < opts.get("eta", 20)).double()
    if kind in ("imbsam", "focal_sam"):
        if kind == "imbsam":
            c = opts["tail_weight"] * tail
            r = (1 - c).clamp_min(0)
        else:
            c = opts["lam"] * (1 - n / n.sum()) ** opts["gamma"]
            r = 1 - c
        g_rest = _grad(lambda w: part(w, r) + extra(w), ws)
        g_c = _grad(lambda w: part(w, c), ws)
        return _add(g_rest, _grad(lambda w: part(w, c), _ascent(ws, g_c, RHO, adaptive)))
    if kind == "sse_sam":
        head = 1 - tail
        g_h = _grad(lambda w: part(w, head), ws)
        if opts["head_rho"] > 0:
            g_h = _grad(lambda w: part(w, head), _ascent(ws, g_h, opts["head_rho"]))
        g_t = _grad(lambda w: part(w, tail), ws)
        return _add(g_h, _grad(lambda w: part(w, tail), _ascent(ws, g_t, RHO)), _grad(extra, ws))
    assert kind == "cc_sam"
    m = (n - 1).clamp_min(1)
    factors = (m / m.min()) ** -0.25
    total = _grad(extra, ws)
    for k in classes:
        onehot = torch.eye(C, dtype=torch.float64)[k]
        g_k = _grad(lambda w, e=onehot: part(w, e), ws)
        moved = _ascent(ws, g_k, RHO * float(factors[k]), only=classifier)
        total = _add(total, _grad(lambda w, e=onehot: part(w, e), moved))
    return total


def _no_extra(ws: Weights) -> torch.Tensor:
    """ERM: no loss outside the classes (a zero that autograd can differentiate)."""
    return sum(0.0 * w.sum() for w in ws.values())


# ----------------------------------------------------------------------------- steps under test
VARIANTS = {
    "imbsam": (dict(imbsam_eta=20.0, imbsam_tail_weight=2.0), dict(eta=20, tail_weight=2.0)),
    "focal_sam": (dict(focal_sam_gamma=2.0, focal_sam_lambda=0.8), dict(gamma=2.0, lam=0.8)),
    "focal_sam_c_above_1": (dict(focal_sam_gamma=0.5, focal_sam_lambda=1.6), dict(gamma=0.5, lam=1.6)),
    "sse_sam": (dict(sse_eta=20.0, sse_head_rho=0.1, sse_gamma=0.5), dict(eta=20, head_rho=0.1)),
    "sse_sam_after_switch": (dict(sse_eta=20.0, sse_head_rho=0.1, sse_gamma=0.5), dict(eta=20, head_rho=0.0)),
    "cc_sam": (dict(cc_sam_scope="all"), {}),
    "cc_sam_classifier": (dict(cc_sam_scope="classifier"), {}),
}


def _kind(variant: str) -> str:
    return next(k for k in ("imbsam", "focal_sam", "sse_sam", "cc_sam") if variant.startswith(k))


def _step(variant: str, params, adaptive: bool = False):
    options, _ = VARIANTS[variant]
    step = build_step(_kind(variant), params, replace(HYPER, adaptive=adaptive, cls_num_list=COUNTS),
                      config=SimpleNamespace(**options))
    if variant == "sse_sam_after_switch":
        step.set_progress(1, 2, 10)  # epoch 1 of 2 >= gamma * epochs: the head radius is 0
    return step


# The adaptive (ASAM) ascent is SAM's own; it is checked once, with ImbSAM.
@pytest.mark.parametrize("variant, adaptive", [(v, False) for v in VARIANTS] + [("imbsam", True)])
def test_erm_update_equals_the_independent_computation(variant: str, adaptive: bool) -> None:
    x, y = _batch()
    model = TinyNet().double()
    ref = copy.deepcopy(model)
    weight = effective_number_weights(COUNTS, 0.99)
    criterion = WeightedCrossEntropy(weight)
    step = _step(variant, model.parameters(), adaptive)
    w_cls = weight.double()

    def part(ws: Weights, v: torch.Tensor) -> torch.Tensor:
        z = functional_call(ref, ws, (x,))
        ce = torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]
        return (v[y] * w_cls[y] * ce).sum() / w_cls[y].sum()

    ws = {k: v.detach().clone() for k, v in model.named_parameters()}
    bufs: Weights = {}
    classes = sorted(set(y.tolist()))
    for _ in range(2):
        step(model, supervised_objective(x, y, criterion, per_sample=True))
        g = hand_update(_kind(variant), ws, part, _no_extra, classes, VARIANTS[variant][1], adaptive,
                        classifier={"linear.weight", "linear.bias"} if variant == "cc_sam_classifier" else None)
        ws, bufs = _sgd(ws, g, bufs)
        for k, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ws[k], atol=ERM_ATOL, rtol=0, msg=f"{variant}: {k}")
    # and the variant is not SAM: a SAM step from the same start ends elsewhere
    sam_model = TinyNet().double()
    sam = build_step("sam", sam_model.parameters(), replace(HYPER, adaptive=adaptive))
    for _ in range(2):
        sam(sam_model, supervised_objective(x, y, criterion, per_sample=True))
    assert max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), sam_model.parameters(),
                                                                     strict=True)) > 100 * ERM_ATOL


class TinyBackbone(nn.Module):
    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x.flatten(1)))


@pytest.mark.parametrize("variant", ["imbsam", "focal_sam", "sse_sam", "cc_sam_classifier"])
def test_glmc_update_equals_the_independent_computation(variant: str) -> None:
    torch.manual_seed(1)
    net = GLMCNet(TinyBackbone(), C, proj_dim=3).double().train()
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(3)
    y_a = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    y_b = torch.tensor([3, 2, 3, 2, 1, 3, 0, 2])
    batch_a = (torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64),
               torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64), y_a)
    batch_b = (torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64),
               torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64), y_b)
    step = _step(variant, net.parameters())
    lw = label_weights(COUNTS, 1.0)
    cw, alpha = 2.0, 0.7
    glmc = GLMCUpdate(step.optimizer, lw, C, cw, torch.Generator().manual_seed(5), True, step=step)
    classifier = {"fc.weight", "fc.bias", "fc_cb.weight", "fc_cb.bias"}
    ws = {k: v.detach().clone() for k, v in net.named_parameters()}
    bufs: Weights = {}
    for _ in range(2):
        m = glmc.mix(batch_a, batch_b)
        lam = m.lam
        # the samples' class shares and soft targets lam e_A + (1 - lam) e_B, in the data's float32
        onehot = torch.eye(C)
        member = (lam * onehot[y_a] + (1 - lam) * onehot[y_b]).double()
        soft = member
        soft_w = (lam * (onehot[y_a] * lw) + (1 - lam) * (onehot[y_b] * lw)).double()

        def outputs(ws: Weights, m=m):
            return functional_call(ref, ws, (m.x_mix,)), functional_call(ref, ws, (m.x_cut,))

        def part(ws: Weights, v: torch.Tensor, outputs=outputs, member=member, soft=soft, soft_w=soft_w):
            (fc_m, cb_m, _, _), (fc_c, cb_c, _, _) = outputs(ws)

            def ce(z, t):
                return -(t * F.log_softmax(z, 1)).sum(1)

            p = alpha * (ce(fc_m, soft) + ce(fc_c, soft)) + (1 - alpha) * (ce(cb_m, soft_w) + ce(cb_c, soft_w))
            return ((member @ v) * p).mean()

        def extra(ws: Weights, outputs=outputs):
            (_, _, z_m, p_m), (_, _, z_c, p_c) = outputs(ws)
            return cw * (-F.cosine_similarity(p_m, z_c.detach()).mean() - F.cosine_similarity(p_c, z_m.detach()).mean())

        glmc.update(net, m, alpha)
        classes = sorted(set(y_a.tolist()) | set(y_b.tolist())) if 0 < lam < 1 else sorted(set(y_a.tolist()))
        gr = hand_update(_kind(variant), ws, part, extra, classes, VARIANTS[variant][1],
                         classifier=classifier if variant == "cc_sam_classifier" else None)
        ws, bufs = _sgd(ws, gr, bufs)
        for k, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), ws[k], atol=GLMC_ATOL, rtol=0, msg=f"{variant}: {k}")


# ----------------------------------------------------------------------------- c = 1 is SAM
@pytest.mark.parametrize("variant, options", [
    ("focal_sam", dict(focal_sam_gamma=0.0, focal_sam_lambda=1.0)),
    ("imbsam", dict(imbsam_eta=1e9, imbsam_tail_weight=1.0)),
])
def test_unit_class_weights_are_sam_bit_for_bit(variant: str, options: dict) -> None:
    x, y = _batch()
    criterion = WeightedCrossEntropy(effective_number_weights(COUNTS, 0.99))
    a, b = TinyNet().double(), TinyNet().double()
    sam = build_step("sam", a.parameters(), HYPER)
    mine = build_step(variant, b.parameters(), replace(HYPER, cls_num_list=COUNTS),
                      config=SimpleNamespace(**options))
    assert mine.is_sam()
    for _ in range(3):
        sam(a, supervised_objective(x, y, criterion))
        mine(b, supervised_objective(x, y, criterion, per_sample=True))
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    # The general split (L_rest = 0, L_asc = the loss) is SAM too, up to the summation order of the split.
    c = TinyNet().double()
    split = build_step(variant, c.parameters(), replace(HYPER, cls_num_list=COUNTS),
                       config=SimpleNamespace(**options))
    for _ in range(3):
        split.split_step(c, supervised_objective(x, y, criterion, per_sample=True))
    for p, q in zip(a.parameters(), c.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=ERM_ATOL, rtol=0)


# ----------------------------------------------------------------------------- warnings and refusals
def test_an_empty_tail_set_is_warned() -> None:
    model = TinyNet().double()

    def imbsam(counts: list[int], eta: float):
        return build_step("imbsam", model.parameters(), replace(HYPER, cls_num_list=counts),
                          config=SimpleNamespace(imbsam_eta=eta))

    cifar10_if100 = [int(5000 * 0.01 ** (k / 9)) for k in range(10)]  # 5000 ... 50: no class under 20
    (note,) = imbsam(cifar10_if100, 20).warnings()
    assert "tail set is empty" in note and "--imbsam-eta" in note and "50" in note
    assert imbsam(cifar10_if100, 100).warnings() == []  # 83 and 50 form the tail
    (note,) = imbsam(cifar10_if100, 6000).warnings()
    assert "every class" in note
    (note,) = build_step("sse_sam", model.parameters(), replace(HYPER, cls_num_list=cifar10_if100),
                         config=SimpleNamespace(sse_eta=10)).warnings()
    assert "tail set is empty" in note


def test_a_loss_without_per_sample_form_is_refused() -> None:
    from ltsam.losses import per_sample_losses

    class Plain(nn.Module):
        def forward(self, logits, targets):
            return F.cross_entropy(logits, targets)

    x, y = _batch()
    with pytest.raises(UserError, match="per_sample"):
        per_sample_losses(Plain(), torch.randn(12, C), y)
    step = _step("imbsam", TinyNet().double().parameters())
    with pytest.raises(UserError, match="per-sample"):
        step(TinyNet().double(), supervised_objective(x, y, WeightedCrossEntropy()))  # per_sample not asked for


def test_variants_refuse_torchrun() -> None:
    from ltsam.config import resolve
    from ltsam.methods import Method, MethodContext

    for flags in (dict(optimizer="imbsam"), dict(optimizer="sam", sam_adaptive_trigger=True)):
        cfg = resolve(flags)
        ctx = MethodContext(cfg, SimpleNamespace(cls_num_list=COUNTS), TinyNet(), torch.device("cpu"),
                            lambda: torch.autocast("cpu", enabled=False), world=2)
        with pytest.raises(UserError, match="torchrun"):
            Method(ctx).build_step()
        Method(MethodContext(cfg, ctx.data, ctx.model, ctx.device, ctx.autocast)).build_step()  # one process: fine
    cfg = resolve(dict(optimizer="sam", sam_every=2))
    Method(MethodContext(cfg, ctx.data, ctx.model, ctx.device, ctx.autocast, world=2)).build_step()


# ----------------------------------------------------------------------------- SAM only when it pays
class CountingObjective:
    """ERM's objective, counting its evaluations (a SAM step evaluates twice, a plain step once)."""

    def __init__(self, x, y, criterion):
        self.inner = supervised_objective(x, y, criterion)
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return self.inner(model)


def _passes(step, model, objective: CountingObjective) -> int:
    before = objective.calls
    step(model, objective)
    return objective.calls - before


def test_sam_every_k_is_sam_on_every_kth_step_and_sgd_otherwise() -> None:
    x, y = _batch()
    criterion = WeightedCrossEntropy()
    a, b = TinyNet().double(), TinyNet().double()
    step = build_step("sam", a.parameters(), HYPER, config=SimpleNamespace(sam_every=3))
    sam = build_step("sam", b.parameters(), HYPER)
    sgd = SGDStep(sam.optimizer.base_optimizer)
    objective = CountingObjective(x, y, criterion)
    passes = []
    for i in range(1, 7):
        passes.append(_passes(step, a, objective))
        (sam if i % 3 == 0 else sgd)(b, supervised_objective(x, y, criterion))
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    assert passes == [1, 1, 2, 1, 1, 2]


def test_sam_prob_draws_one_bernoulli_per_step() -> None:
    def pattern(seed: int, p: float, n: int = 400) -> list[str]:
        f = SAMFrequency(sam_prob=p, seed=seed)
        return [f.plan() for _ in range(n)]

    a = pattern(0, 0.3)
    hits = a.count("sam")
    assert abs(hits - 120) < 5 * (400 * 0.3 * 0.7) ** 0.5  # Binomial(400, 0.3): mean 120, sd 9.2
    assert a == pattern(0, 0.3) and a != pattern(1, 0.3)
    assert set(pattern(0, 0.0, 50)) == {"plain"} and set(pattern(0, 1.0, 50)) == {"sam"}
    # combined with every-k: SAM only where both say so
    f = SAMFrequency(sam_every=2, sam_prob=0.5, seed=0)
    both = [f.plan() for _ in range(200)]
    assert all(s == "plain" for s in both[0::2]) and 20 < both[1::2].count("sam") < 80


def test_frequency_state_round_trips_and_matters() -> None:
    f = SAMFrequency(sam_every=2, sam_prob=0.6, sam_adaptive_trigger=True, seed=4)
    f.set_progress(0, 2, 50)
    for i in range(30):
        if f.plan() == "decide":
            f.decide(float(1 + (i * 7919) % 13))
    g = SAMFrequency(sam_every=2, sam_prob=0.6, sam_adaptive_trigger=True, seed=4)
    g.load_state_dict(copy.deepcopy(f.state_dict()))
    fresh = SAMFrequency(sam_every=2, sam_prob=0.6, sam_adaptive_trigger=True, seed=4)
    for h in (f, g, fresh):
        h.set_progress(1, 2, 50)

    def run(h: SAMFrequency) -> list:
        out = []
        for i in range(40):
            plan = h.plan()
            out.append(h.decide(float(1 + (i * 31) % 11)) if plan == "decide" else plan)
        return out

    assert run(f) == run(g)
    assert run(fresh) != run(g)
    assert SAMFrequency().state_dict() == {}  # plain SAM saves nothing: its checkpoints are as before


def test_adaptive_trigger_follows_ae_sam_rule() -> None:
    """Decisions equal AE-SAM's rule worked out here from ||grad L(w_t)||^2; the weights equal SGD / SAM steps
    taken by that rule (bit for bit: the trigger's pass is reused, not recomputed)."""
    x, y = _batch()
    criterion = WeightedCrossEntropy()
    a, b = TinyNet().double(), TinyNet().double()
    delta, lam1, lam2, steps = 0.6, -0.5, 1.5, 24
    step = build_step("sam", a.parameters(), HYPER, config=SimpleNamespace(
        sam_adaptive_trigger=True, ae_sam_delta=delta, ae_sam_lambda1=lam1, ae_sam_lambda2=lam2))
    step.set_progress(0, 1, steps)
    sam = build_step("sam", b.parameters(), HYPER)
    sgd = SGDStep(sam.optimizer.base_optimizer)
    objective = CountingObjective(x, y, criterion)
    mu = var = 0.0
    taken = []
    for t in range(steps):
        probe = copy.deepcopy(b)
        loss = criterion(probe(x).float(), y)
        s = float(sum((g_ ** 2).sum() for g_ in torch.autograd.grad(loss, list(probe.parameters()))))
        mu = delta * mu + (1 - delta) * s
        var = delta * var + (1 - delta) * (s - mu) ** 2
        c_t = (t / steps) * lam1 + (1 - t / steps) * lam2
        use = s >= mu + c_t * var ** 0.5
        taken.append(use)
        assert _passes(step, a, objective) == (2 if use else 1)
        (sam if use else sgd)(b, supervised_objective(x, y, criterion))
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    assert any(taken) and not all(taken)
    assert step.frequency.sam_steps == sum(taken)


def test_frequency_options_wrap_the_variants() -> None:
    x, y = _batch()
    criterion = WeightedCrossEntropy()
    model = TinyNet().double()
    step = build_step("imbsam", model.parameters(), replace(HYPER, cls_num_list=COUNTS),
                      config=SimpleNamespace(sam_every=2))
    objective = CountingObjective(x, y, criterion)
    objective.inner = supervised_objective(x, y, criterion, per_sample=True)
    assert [_passes(step, model, objective) for _ in range(4)] == [1, 2, 1, 2]
    assert isinstance(step, SAMStep) and "sam_every" in {o.name for o in STEPS.entry("cc_sam").options}


def test_cc_sam_radius_per_class() -> None:
    f = class_radius_factors([101, 17, 2, 1])
    expected = torch.tensor([100.0, 16.0, 1.0, 1.0]) ** -0.25  # (n - 1) floored at 1, relative to the rarest
    torch.testing.assert_close(f, expected.double())
    assert float(f.max()) == 1.0


def test_steps_that_retain_graphs_say_so() -> None:
    """The trainer turns off torch.compile's donated buffers for these (else their second backward raises)."""
    params = list(TinyNet().parameters())
    for variant in ("imbsam", "focal_sam", "sse_sam", "cc_sam"):
        assert _step(variant, params).retains_graph
    assert not build_step("sam", params, HYPER).retains_graph
    assert build_step("sam", params, HYPER,
                      config=SimpleNamespace(sam_adaptive_trigger=True)).retains_graph


def test_a_variant_on_a_compiled_model_equals_eager() -> None:
    """ImbSAM (three backward passes through one forward) on ``torch.compile``'s model, as the trainer sets it
    up, gives the eager update (float64; the compiled kernels may sum in another order)."""
    from ltsam.acceleration import allow_retained_graphs, compile_with_fallback

    x, y = _batch()
    criterion = WeightedCrossEntropy()
    eager, model = TinyNet().double(), TinyNet().double()
    step_eager, step = _step("imbsam", eager.parameters()), _step("imbsam", model.parameters())
    assert step.retains_graph
    allow_retained_graphs()
    compiled, ok = compile_with_fallback(model, lambda net: net(x).sum().backward())
    if not ok:
        pytest.skip("torch.compile is unavailable on this platform")
    for _ in range(2):
        step_eager(eager, supervised_objective(x, y, criterion, per_sample=True))
        step(compiled, supervised_objective(x, y, criterion, per_sample=True))
    for p, q in zip(eager.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=rtol(torch.float64, n=12, stages=20), rtol=0)
    assert any(not torch.equal(p, q) for p, q in zip(eager.parameters(), TinyNet().double().parameters(),
                                                        strict=True))
