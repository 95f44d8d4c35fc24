"""Losses and class weights against hand computations (the reference's losses.py and class weights).

Every expected value is re-derived here in plain Python/numpy from the reference code's formulas (or
taken from values computed from them and written out here); the functions under test are never used as oracles.

Tolerances: values written out here are compared at their written precision (abs 1e-4 for 4 decimals; the VS
table's 3 decimals, 1.5e-3), the hand formulas' float64 values with the derived bounds below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltsam.errors import UserError
from ltsam.losses import (
    FocalLoss,
    LDAMLoss,
    VSLoss,
    build_loss,
    effective_number_weights,
)
from ltsam.rules import class_weights_for_epoch
from tests.tolerances import rtol

# Class weights, margins, offsets: computed in float64 and stored as float32 buffers, so one rounding away from
# the hand value (the float64 formulas differ from Python's by a few 1e-16).
ROUNDED = rtol(torch.float32)
# A float32 loss against the hand formula in float64: the logits rounded to float32, a log-sum-exp over <= 10
# classes, a (weighted) mean over <= 24 samples, and the elementwise margin / scale / offset / exp / power steps.
LOSS_RTOL = rtol(torch.float32, n=24, stages=4)

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # the reference's CIFAR-10-LT, factor 0.01


def _cifar100_if100() -> list[int]:
    return [int(500 * 0.01 ** (c / 99.0)) for c in range(100)]


# --- hand formulas -------------------------------------------------------------------------------

def _hand_ce(z: np.ndarray, y: int) -> float:
    """-log softmax(z)[y] with a max-shifted log-sum-exp, in plain Python floats."""
    m = max(float(v) for v in z)
    lse = m + math.log(sum(math.exp(float(v) - m) for v in z))
    return lse - float(z[y])


def _hand_weighted_mean(losses: list[float], targets: np.ndarray,
                        weight: list[float] | None) -> float:
    if weight is None:
        return sum(losses) / len(losses)
    num = sum(weight[int(t)] * li for li, t in zip(losses, targets, strict=True))
    den = sum(weight[int(t)] for t in targets)
    return num / den


def _hand_effective_weights(counts: list[int], beta: float) -> list[float]:
    raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    s = sum(raw)
    return [r / s * len(counts) for r in raw]


def _batch(n: int = 16, c: int = 10, seed: int = 0, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, c))
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)[: min(c, n)]  # every class present at least once
    return z, y


def _t(z: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # float32 logits: the losses keep their class weights as float32 buffers.
    return torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


# --- effective-number weights --------------------------------------------------------------------

def test_effective_weights_cifar10_if100_spec_values():
    w = effective_number_weights(CIFAR10_IF100, 0.9999)
    spec = [0.0506, 0.0769, 0.1211, 0.1950, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927]
    assert w.shape == (10,)
    assert w.tolist() == pytest.approx(spec, abs=1e-4)
    assert float(w.sum()) == pytest.approx(10.0, rel=rtol(torch.float32, n=10))  # 10 rounded terms, summed
    # and the hand formula, tighter
    assert w.tolist() == pytest.approx(_hand_effective_weights(CIFAR10_IF100, 0.9999), rel=ROUNDED)


def test_effective_weights_cifar100_if100_ends_and_sum():
    counts = _cifar100_if100()
    assert counts[0] == 500 and counts[-1] == 5
    w = effective_number_weights(counts, 0.9999)
    assert float(w[0]) == pytest.approx(0.0449, abs=1e-4)
    assert float(w[-1]) == pytest.approx(4.3783, abs=1e-4)
    assert float(w.sum()) == pytest.approx(100.0, rel=rtol(torch.float32, n=100))
    assert w.tolist() == pytest.approx(_hand_effective_weights(counts, 0.9999), rel=ROUNDED)


def test_effective_weights_beta_zero_gives_ones():
    w = effective_number_weights(CIFAR10_IF100, 0.0)
    assert w.tolist() == [1.0] * 10


def test_effective_weights_other_beta_matches_hand():
    counts = [30, 7, 1]
    w = effective_number_weights(counts, 0.9)
    assert w.tolist() == pytest.approx(_hand_effective_weights(counts, 0.9), rel=ROUNDED)
    assert float(w.sum()) == pytest.approx(3.0, rel=rtol(torch.float32, n=3))


# --- LDAM ----------------------------------------------------------------------------------------

def test_ldam_margins_spec_values():
    loss = LDAMLoss(CIFAR10_IF100, max_m=0.5, s=30.0)
    spec = [0.1581, 0.1797, 0.2042, 0.2321, 0.2638, 0.2998, 0.3407, 0.3872, 0.4405, 0.5000]
    assert loss.margins.tolist() == pytest.approx(spec, abs=1e-4)
    hand = [0.5 * (50 / n) ** 0.25 for n in CIFAR10_IF100]
    assert loss.margins.tolist() == pytest.approx(hand, rel=ROUNDED)


def test_ldam_margins_cifar100_ends_and_max_m():
    counts = _cifar100_if100()
    m = LDAMLoss(counts, max_m=0.5).margins
    assert float(m[0]) == pytest.approx(0.1581, abs=1e-4)
    assert float(m[-1]) == pytest.approx(0.5, rel=ROUNDED)
    m3 = LDAMLoss(counts, max_m=0.3).margins
    assert float(m3.max()) == pytest.approx(0.3, rel=ROUNDED)
    assert float(m3[0]) == pytest.approx(0.3 * (5 / 500) ** 0.25, rel=ROUNDED)


def _hand_ldam(z, y, counts, max_m, s, weight):
    n_min = min(counts)
    margins = [max_m * (n_min / n) ** 0.25 for n in counts]
    losses = []
    for zi, yi in zip(z, y, strict=True):
        adj = [s * (float(v) - (margins[int(yi)] if c == int(yi) else 0.0))
               for c, v in enumerate(zi)]
        losses.append(_hand_ce(np.array(adj), int(yi)))
    return _hand_weighted_mean(losses, y, weight)


@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_loss_value(weighted):
    z, y = _batch(n=24, c=10, seed=1, scale=1.0)
    z = np.clip(z, -1.0, 1.0)  # cosine logits
    weight = _hand_effective_weights(CIFAR10_IF100, 0.9999) if weighted else None
    wt = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    loss = LDAMLoss(CIFAR10_IF100, max_m=0.5, s=30.0, weight=wt)
    zt, yt = _t(z, y)
    got = float(loss(zt, yt))
    want = _hand_ldam(z, y, CIFAR10_IF100, 0.5, 30.0, weight)
    assert got == pytest.approx(want, rel=LOSS_RTOL)
    # the weighted and unweighted values must differ (weights really enter the loss)
    if weighted:
        assert want != pytest.approx(_hand_ldam(z, y, CIFAR10_IF100, 0.5, 30.0, None), rel=1e-3)


def test_ldam_loss_other_scale_and_build_loss():
    z, y = _batch(n=12, c=4, seed=2, scale=0.5)
    counts = [100, 40, 10, 2]
    zt, yt = _t(z, y)
    got = float(build_loss("LDAM", counts, max_m=0.3, ldam_s=16.0)(zt, yt))
    assert got == pytest.approx(_hand_ldam(z, y, counts, 0.3, 16.0, None), rel=LOSS_RTOL)


def test_ldam_only_true_class_is_shifted():
    # A logit row of zeros: after the margin only the true class moves down by s*m_y.
    counts = [100, 10]
    loss = LDAMLoss(counts, max_m=0.5, s=30.0)
    z = torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    m = [0.5 * (10 / 100) ** 0.25, 0.5]
    want = [math.log(1 + math.exp(30 * m[0])), math.log(1 + math.exp(30 * m[1]))]
    assert float(loss(z, y)) == pytest.approx(sum(want) / 2, rel=LOSS_RTOL)


# --- VS ------------------------------------------------------------------------------------------

def test_vs_delta_iota_spec_values():
    loss = VSLoss(CIFAR10_IF100, gamma=0.3, tau=1.0)
    delta = (1.0 / loss.scale).tolist()
    spec_delta = [1.000, 1.166, 1.360, 1.585, 1.849, 2.155, 2.512, 2.930, 3.420, 3.981]
    spec_iota = [-0.909, -1.421, -1.933, -2.444, -2.957, -3.468, -3.979, -4.492, -5.007, -5.514]
    assert delta == pytest.approx(spec_delta, abs=1.5e-3)
    assert loss.iota.tolist() == pytest.approx(spec_iota, abs=1.5e-3)
    total = sum(CIFAR10_IF100)
    # delta = 1 / scale in float32: the buffer's rounding and the division's
    assert delta == pytest.approx([(5000 / n) ** 0.3 for n in CIFAR10_IF100], rel=rtol(torch.float32, stages=2))
    hand_iota = [math.log(n / total) for n in CIFAR10_IF100]
    assert loss.iota.tolist() == pytest.approx(hand_iota, rel=ROUNDED)


def _hand_vs(z, y, counts, gamma, tau, weight):
    n_max, total = max(counts), sum(counts)
    delta = [(n_max / n) ** gamma for n in counts]
    iota = [tau * math.log(n / total) for n in counts]
    losses = []
    for zi, yi in zip(z, y, strict=True):
        adj = [float(v) / delta[c] + iota[c] for c, v in enumerate(zi)]
        losses.append(_hand_ce(np.array(adj), int(yi)))
    return _hand_weighted_mean(losses, y, weight)


@pytest.mark.parametrize(("weighted", "gamma", "tau"), [(False, 0.3, 1.0), (True, 0.3, 1.0),
                                                        (False, 0.2, 1.5)])
def test_vs_loss_value(weighted, gamma, tau):
    z, y = _batch(n=20, c=10, seed=3)
    weight = _hand_effective_weights(CIFAR10_IF100, 0.9999) if weighted else None
    wt = None if weight is None else torch.tensor(weight)
    zt, yt = _t(z, y)
    got = float(VSLoss(CIFAR10_IF100, gamma=gamma, tau=tau, weight=wt)(zt, yt))
    assert got == pytest.approx(_hand_vs(z, y, CIFAR10_IF100, gamma, tau, weight), rel=LOSS_RTOL)
    got_b = float(build_loss("vs", CIFAR10_IF100, weight=wt, vs_gamma=gamma, vs_tau=tau)(zt, yt))
    assert got_b == got  # the same VSLoss on the same inputs: bit for bit


# --- Focal ---------------------------------------------------------------------------------------

def _hand_focal(z, y, weight, gamma):
    out = []
    for zi, yi in zip(z, y, strict=True):
        ce = _hand_ce(zi, int(yi))
        li = ce * (weight[int(yi)] if weight is not None else 1.0)  # weight inside the CE
        p = math.exp(-li)  # the "p from weighted CE" quirk
        out.append((1.0 - p) ** gamma * li)
    return sum(out) / len(out)  # plain batch mean


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma0_is_plain_mean_of_weighted_ce(weighted):
    z, y = _batch(n=18, c=10, seed=4)
    weight = _hand_effective_weights(CIFAR10_IF100, 0.9999) if weighted else None
    wt = None if weight is None else torch.tensor(weight)
    zt, yt = _t(z, y)
    got = float(FocalLoss(wt, gamma=0.0)(zt, yt))
    per = [_hand_ce(zi, int(yi)) * (weight[int(yi)] if weighted else 1.0)
           for zi, yi in zip(z, y, strict=True)]
    assert got == pytest.approx(sum(per) / len(per), rel=LOSS_RTOL)
    if weighted:  # NOT the weight-normalised mean
        assert got != pytest.approx(_hand_weighted_mean(
            [_hand_ce(zi, int(yi)) for zi, yi in zip(z, y, strict=True)], y, weight), rel=1e-3)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_loss_value(gamma, weighted):
    z, y = _batch(n=18, c=10, seed=5)
    weight = _hand_effective_weights(CIFAR10_IF100, 0.9999) if weighted else None
    wt = None if weight is None else torch.tensor(weight)
    zt, yt = _t(z, y)
    got = float(FocalLoss(wt, gamma=gamma)(zt, yt))
    assert got == pytest.approx(_hand_focal(z, y, weight, gamma), rel=LOSS_RTOL)


def test_focal_quirk_differs_from_unweighted_p():
    # With weights far from 1 the "p from weighted CE" version differs from p = softmax_y.
    z, y = _batch(n=10, c=10, seed=6)
    weight = _hand_effective_weights(CIFAR10_IF100, 0.9999)
    zt, yt = _t(z, y)
    got = float(FocalLoss(torch.tensor(weight), gamma=1.0)(zt, yt))
    alt = []
    for zi, yi in zip(z, y, strict=True):
        ce = _hand_ce(zi, int(yi))
        alt.append((1.0 - math.exp(-ce)) * weight[int(yi)] * ce)
    assert got != pytest.approx(sum(alt) / len(alt), rel=1e-3)


def test_focal_default_gamma_and_build_loss():
    z, y = _batch(n=8, c=10, seed=7)
    zt, yt = _t(z, y)
    assert FocalLoss().gamma == 1.0
    got = float(build_loss("Focal", CIFAR10_IF100)(zt, yt))
    assert got == pytest.approx(_hand_focal(z, y, None, 1.0), rel=LOSS_RTOL)
    got2 = float(build_loss("focal", CIFAR10_IF100, focal_gamma=2.0)(zt, yt))
    assert got2 == pytest.approx(_hand_focal(z, y, None, 2.0), rel=LOSS_RTOL)


# --- CE ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
def test_ce_via_build_loss(weighted):
    z, y = _batch(n=22, c=10, seed=8)
    weight = _hand_effective_weights(CIFAR10_IF100, 0.9999) if weighted else None
    wt = None if weight is None else torch.tensor(weight)
    zt, yt = _t(z, y)
    got = float(build_loss("CE", CIFAR10_IF100, weight=wt)(zt, yt))
    per = [_hand_ce(zi, int(yi)) for zi, yi in zip(z, y, strict=True)]
    assert got == pytest.approx(_hand_weighted_mean(per, y, weight), rel=LOSS_RTOL)


def test_unknown_loss_raises_user_error():
    with pytest.raises(UserError):
        build_loss("hinge", CIFAR10_IF100)


# --- train rules ---------------------------------------------------------------------------------

def test_drw_weights_switch_at_drw_epoch():
    hand = _hand_effective_weights(CIFAR10_IF100, 0.9999)
    for epoch in (0, 1, 158, 159):
        assert class_weights_for_epoch("drw", CIFAR10_IF100, epoch, drw_epoch=160) is None
    for epoch in (160, 161, 199):
        w = class_weights_for_epoch("DRW", CIFAR10_IF100, epoch, drw_epoch=160)
        assert w is not None
        assert w.tolist() == pytest.approx(hand, rel=ROUNDED)
    assert class_weights_for_epoch("drw", CIFAR10_IF100, 59, drw_epoch=60) is None
    assert class_weights_for_epoch("drw", CIFAR10_IF100, 60, drw_epoch=60) is not None


def test_reweight_always_weighted_none_and_resample_unweighted():
    hand = _hand_effective_weights(CIFAR10_IF100, 0.9999)
    for epoch in (0, 100, 160, 199):
        w = class_weights_for_epoch("reweight", CIFAR10_IF100, epoch, drw_epoch=160)
        assert w is not None and w.tolist() == pytest.approx(hand, rel=ROUNDED)
        assert class_weights_for_epoch("none", CIFAR10_IF100, epoch, drw_epoch=160) is None
        assert class_weights_for_epoch("Resample", CIFAR10_IF100, epoch, drw_epoch=160) is None


def test_train_rule_custom_beta():
    w = class_weights_for_epoch("reweight", [30, 7, 1], 0, drw_epoch=0, beta=0.9)
    assert w.tolist() == pytest.approx(_hand_effective_weights([30, 7, 1], 0.9), rel=ROUNDED)


def test_unknown_train_rule_raises_user_error():
    with pytest.raises(UserError):
        class_weights_for_epoch("focal", CIFAR10_IF100, 0, drw_epoch=160)
