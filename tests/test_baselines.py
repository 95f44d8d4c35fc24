"""The long-tail baselines against independent formulas: the logit-adjusted and Balanced Softmax losses against
cross-entropy on hand-shifted logits, post-hoc adjustment against a hand argmax, tau-normalisation against
hand-normalised weights, LWS folding, MaxNorm's cap, and the logit-adjustment LR schedule's boundaries.

Every expected value is computed here in plain Python floats from the papers' formulas; the code under test is
never its own oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ltsam.errors import UserError
from ltsam.evaluate import evaluate_offsets
from ltsam.finetune.heads import MaxNorm, ScaledLinear, tau_normalized
from ltsam.losses import LOSSES, build_loss, effective_number_weights
from ltsam.posthoc import adjustment, parse_taus
from tests.tolerances import rtol

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
# float32 logits against the float64 hand formula: the offsets stored as float32 (one rounding each), a
# log-sum-exp over 10 classes, a weighted mean over 24 samples, the shift and exp steps.
LOSS_RTOL = rtol(torch.float32, n=24, stages=4)


def _hand_ce(z: list[float], y: int) -> float:
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z)) - z[y]


def _hand_loss(logits: torch.Tensor, targets: torch.Tensor, shift: list[float], weight: list[float] | None) -> float:
    """Weighted-mean CE of the logits shifted by ``shift`` per class: sum_i w_yi l_i / sum_i w_yi."""
    losses = [_hand_ce([float(v) + s for v, s in zip(row, shift)], int(t)) for row, t in zip(logits, targets)]
    if weight is None:
        return sum(losses) / len(losses)
    w = [weight[int(t)] for t in targets]
    return sum(wi * li for wi, li in zip(w, losses)) / sum(w)


def _batch(seed: int = 0, n: int = 24, c: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_logit_adjusted_loss_is_ce_on_logits_shifted_by_tau_log_prior(tau: float, weighted: bool) -> None:
    z, y = _batch(1)
    total = sum(CIFAR10_IF100)
    shift = [tau * math.log(n / total) for n in CIFAR10_IF100]
    weight = [1.0 / n for n in CIFAR10_IF100] if weighted else None
    w = None if weight is None else torch.tensor(weight)
    got = float(build_loss("la", CIFAR10_IF100, w, la_tau=tau)(z, y))
    want = _hand_loss(z, y, shift, weight)
    assert got == pytest.approx(want, rel=LOSS_RTOL)
    if tau > 0:  # the shift matters: the unshifted CE is far from it
        assert abs(_hand_loss(z, y, [0.0] * 10, weight) - want) > 100 * LOSS_RTOL * abs(want)


@pytest.mark.parametrize("weighted", [False, True])
def test_balanced_softmax_is_ce_on_logits_shifted_by_log_counts(weighted: bool) -> None:
    z, y = _batch(2)
    weight = list(effective_number_weights(CIFAR10_IF100, 0.9999).double()) if weighted else None
    w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    got = float(build_loss("balanced_softmax", CIFAR10_IF100, w)(z, y))
    want = _hand_loss(z, y, [math.log(n) for n in CIFAR10_IF100], None if weight is None else [float(v) for v in w])
    assert got == pytest.approx(want, rel=LOSS_RTOL)
    # log n and log pi differ by log sum n, a constant the softmax ignores: Balanced Softmax = LA at tau 1.
    la = float(build_loss("la", CIFAR10_IF100, w, la_tau=1.0)(z, y))
    assert got == pytest.approx(la, rel=LOSS_RTOL)


def test_the_losses_are_registered_with_their_option_and_aliases() -> None:
    from ltsam.cli import build_parser
    from ltsam.config import resolve
    from ltsam.train_flags import train_overrides

    assert [o.name for o in LOSSES.entry("la").options] == ["la_tau"]
    assert LOSSES.entry("logit_adjusted").name == "la" and LOSSES.entry("bsce").name == "balanced_softmax"
    args = build_parser().parse_args(["train", "--loss", "la", "--la-tau", "0.5", "--dataset", "digits"])
    cfg = resolve(train_overrides(args))
    assert (cfg.loss, cfg.la_tau, cfg.use_norm) == ("la", 0.5, False)
    z, y = _batch(3)
    got = float(build_loss(cfg.loss, CIFAR10_IF100, None, config=cfg)(z, y))
    total = sum(CIFAR10_IF100)
    assert got == pytest.approx(_hand_loss(z, y, [0.5 * math.log(n / total) for n in CIFAR10_IF100], None),
                                rel=LOSS_RTOL)
    with pytest.raises(UserError, match="at least one training image"):
        build_loss("la", [5, 0, 3])


# --- post-hoc logit adjustment --------------------------------------------------------------------

def test_parse_taus() -> None:
    assert parse_taus("0:2:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert parse_taus("1") == [1.0]
    assert parse_taus("0,0.5,1.5") == [0.0, 0.5, 1.5]
    for bad in ("a", "0:2", "2:0:0.5", "0:1:0", "nan"):
        with pytest.raises(UserError, match="--logit-adjust"):
            parse_taus(bad)


def test_post_hoc_adjustment_against_a_hand_argmax() -> None:
    """argmax_c z_c - tau log pi_c, its confusion, per-class and shot-group accuracy, all by hand."""
    counts = [150, 60, 30, 10]  # many, medium, medium, few
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]
    taus = [0.0, 0.5, 1.0, 2.0]
    found = evaluate_offsets(model, batches, counts, [adjustment(counts, t) for t in taus])
    lean = evaluate_offsets(model, batches, counts, [adjustment(counts, t) for t in taus], confusion=False)
    assert [r for r, _ in lean] == [r for r, _ in found] and all(m is None for _, m in lean)
    with torch.no_grad():
        logits = model(x).double().tolist()
    total = sum(counts)
    for tau, (result, conf) in zip(taus, found):
        adjusted = [[v - tau * math.log(n / total) for v, n in zip(row, counts)] for row in logits]
        gaps = [sorted(row)[-1] - sorted(row)[-2] for row in adjusted]
        assert min(gaps) > 1e-4  # no near-tie that float32 rounding could flip: the comparison below is exact
        preds = [max(range(4), key=lambda c, r=row: r[c]) for row in adjusted]
        hand = [[0] * 4 for _ in range(4)]
        for p, t in zip(preds, y.tolist()):
            hand[t][p] += 1
        assert conf.tolist() == hand
        per_class = [100.0 * hand[c][c] / sum(hand[c]) for c in range(4)]
        assert result["per_class_acc"] == per_class
        assert result["top1"] == 100.0 * sum(hand[c][c] for c in range(4)) / 64
        assert result["shot_acc"] == {"many": per_class[0], "medium": (per_class[1] + per_class[2]) / 2,
                                      "few": per_class[3]}
    # tau moves predictions toward the rare classes: more predictions of the few-shot class at tau 2 than at 0.
    assert found[-1][1][:, 3].sum() > found[0][1][:, 3].sum()


# --- second-stage heads ---------------------------------------------------------------------------

def test_tau_normalisation_against_hand_normalised_weights() -> None:
    torch.manual_seed(1)
    base = nn.Linear(5, 4).double().requires_grad_(False)
    with torch.no_grad():
        base.weight.mul_(torch.tensor([[4.0], [1.0], [0.5], [2.0]], dtype=torch.float64))
    w = base.weight.tolist()
    for tau in (0.0, 0.7, 1.0, 1.9):
        head = tau_normalized(base, tau)
        for k in range(4):
            norm = math.sqrt(sum(v * v for v in w[k]))
            for j in range(5):
                assert float(head.weight[k, j]) == pytest.approx(w[k][j] / norm ** tau, rel=rtol(torch.float64, 5, 3))
        assert torch.equal(head.bias, torch.zeros(4, dtype=torch.float64))  # dropped, as the authors' script
    norms = tau_normalized(base, 1.0).weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(4, dtype=torch.float64), rtol=rtol(torch.float64, 5, 3), atol=0)


def test_lws_folds_into_a_linear_that_computes_the_same_logits() -> None:
    torch.manual_seed(2)
    base = nn.Linear(6, 3).double()
    head = ScaledLinear(base)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64))
    assert not base.weight.requires_grad and head.scales.requires_grad
    x = torch.randn(7, 6, dtype=torch.float64)
    want = [[f * (sum(wj * xj for wj, xj in zip(wk, row)) + b) for wk, b, f in
             zip(base.weight.tolist(), base.bias.tolist(), [0.5, 2.0, 1.5])] for row in x.tolist()]
    bound = rtol(torch.float64, 6, 3)
    torch.testing.assert_close(head(x), torch.tensor(want, dtype=torch.float64), rtol=bound, atol=bound)
    torch.testing.assert_close(head.folded()(x), torch.tensor(want, dtype=torch.float64), rtol=bound, atol=bound)


def test_maxnorm_never_leaves_a_norm_above_its_cap() -> None:
    torch.manual_seed(3)
    d = 16
    weight = torch.randn(10, d) * torch.linspace(0.2, 3.0, 10)[:, None]
    norms = [math.sqrt(sum(v * v for v in row)) for row in weight.tolist()]
    cap = min(norms) + 0.1 * (max(norms) - min(norms))
    maxnorm = MaxNorm(weight, 0.1)
    assert maxnorm.cap == pytest.approx(cap, rel=rtol(torch.float32, d, 2))
    bound = rtol(torch.float32, d, 2)  # the norm of a rescaled row, recomputed: a sum of d squares, then a sqrt
    g = torch.Generator().manual_seed(4)
    w = weight.clone()
    for _ in range(50):
        w += 0.3 * torch.randn(w.shape, generator=g)  # a step that pushes some rows out of the ball
        before = w.clone()
        over = before.norm(dim=1) > maxnorm.cap
        assert over.any()
        maxnorm.project(w)
        after = w.norm(dim=1)
        assert bool((after <= maxnorm.cap * (1 + bound)).all())
        assert torch.equal(w[~over], before[~over])  # rows within the ball are left exactly as they were
        torch.testing.assert_close(after[over], torch.full((int(over.sum()),), maxnorm.cap), rtol=bound, atol=0)
        cos = (w[over] * before[over]).sum(1) / (after[over] * before[over].norm(dim=1))
        torch.testing.assert_close(cos, torch.ones_like(cos), rtol=bound, atol=0)  # the direction is kept


# --- schedule and recipes -------------------------------------------------------------------------

def test_la_schedule_has_the_released_boundaries() -> None:
    """google-research/logit_adjustment: warm-up over 20 (22) epochs, x0.1 / 0.01 / 0.001 from epochs
    604 / 926 / 1128 of 1241 (691 / 1059 / 1290 of 1419)."""
    from ltsam.schedules import learning_rate

    for epochs, warm, drops in ((1241, 20, (604, 926, 1128)), (1419, 22, (691, 1059, 1290))):
        lrs = np.array([learning_rate("la", e, 0.1, epochs) for e in range(epochs)])
        assert lrs[0] == pytest.approx(0.1 / warm) and lrs[warm - 1] == 0.1
        for e in range(warm - 1):
            assert lrs[e] == pytest.approx(0.1 * (e + 1) / warm)
        assert (lrs[warm:drops[0]] == 0.1).all()
        for (start, end), mult in zip(zip(drops, (*drops[1:], epochs)), (0.1, 0.01, 0.001)):
            assert np.allclose(lrs[start:end], 0.1 * mult, rtol=1e-12, atol=0)


def test_baseline_recipes_resolve_to_the_published_settings() -> None:
    from ltsam.config import resolve
    from ltsam.recipes import PAPER_TOP1, RECIPES, REPRODUCED_TOP1, STAGE_RECIPES, get_recipe, get_stage_recipe

    la = resolve({}, get_recipe("la-cifar100-lt-if100"))
    assert (la.loss, la.la_tau, la.epochs, la.lr_schedule, la.batch_size, la.wd, la.arch, la.imb_factor) == (
        "la", 1.0, 1419, "la", 128, 2e-4, "resnet32", 0.01)
    bs = resolve({}, get_recipe("bs-cifar10-lt-if100"))
    assert (bs.loss, bs.batch_size, bs.wd, bs.lr_schedule) == ("balanced_softmax", 512, 5e-4, "cosine")
    wb = resolve({}, get_recipe("wb-stage1-cifar100-lt-if100"))
    assert (wb.wd, wb.lr, wb.batch_size, wb.epochs, wb.optimizer) == (5e-3, 0.01, 64, 320, "sgd")
    assert get_stage_recipe("wb-cifar100-lt-if100")["options"]["wd"] == 0.1
    for recipe in STAGE_RECIPES.values():
        assert recipe["parent"] in RECIPES
    with pytest.raises(UserError, match="--logit-adjust 1"):
        get_stage_recipe("la-posthoc-cifar100-lt-if100")
    assert PAPER_TOP1["la-cifar100-lt-if100"] == 43.89 and PAPER_TOP1["bs-cifar100-lt-if100"] == 46.1
    assert PAPER_TOP1["wb-cifar100-lt-if100"] == 53.35 and REPRODUCED_TOP1["wb-cifar100-lt-if100"][0] == 51.98
