"""LR and rho schedules against the reference code's adjust_learning_rate and adjust_rho.

The functions take 0-indexed epochs; the reference compares the 1-indexed e = epoch + 1.
"""

from __future__ import annotations

import math
import struct

import pytest

from ltsam.errors import UserError
from ltsam.schedules import cosine_lr, learning_rate, rho_for_epoch, scale_epoch, step_lr


def _f16(x: float) -> float:
    """Round-trip through IEEE half precision (independent of numpy)."""
    return struct.unpack("<e", struct.pack("<e", x))[0]


# --- step LR (CIFAR) -----------------------------------------------------------------------------

def _e(one_indexed: int) -> int:
    return one_indexed - 1


def test_step_lr_native_200_epochs():
    base = 0.1
    for e, want in [(1, 0.02), (2, 0.04), (3, 0.06), (4, 0.08), (5, 0.10)]:
        assert step_lr(_e(e), base, 200) == pytest.approx(want, rel=1e-12), e
    for e, want in [(6, 0.1), (100, 0.1), (160, 0.1), (161, 0.001), (170, 0.001), (180, 0.001),
                    (181, 1e-5), (200, 1e-5)]:
        assert step_lr(_e(e), base, 200) == pytest.approx(want, rel=1e-12), e


def test_step_lr_other_base():
    assert step_lr(_e(1), 0.2, 200) == pytest.approx(0.04)
    assert step_lr(_e(161), 0.2, 200) == pytest.approx(0.002)
    assert step_lr(_e(181), 0.2, 200) == pytest.approx(2e-5)


def test_scale_epoch():
    assert (scale_epoch(5, 200), scale_epoch(160, 200), scale_epoch(180, 200)) == (5, 160, 180)
    # 12 epochs: 5*12/200 = 0.3 -> 0 -> at least 1; 160*12/200 = 9.6 -> 10; 180*12/200 = 10.8 -> 11
    assert (scale_epoch(5, 12), scale_epoch(160, 12), scale_epoch(180, 12)) == (1, 10, 11)
    # 100 epochs: 2.5 -> Python's round() (half to even) gives 2; 80; 90
    assert (scale_epoch(5, 100), scale_epoch(160, 100), scale_epoch(180, 100)) == (2, 80, 90)
    # 90 epochs: 2.25 -> 2; 72; 81
    assert (scale_epoch(5, 90), scale_epoch(160, 90), scale_epoch(180, 90)) == (2, 72, 81)
    assert scale_epoch(60, 45, native_total=90) == 30


def test_step_lr_scaled_12_epochs():
    # warm-up 1 epoch, milestones 10 and 11 (1-indexed)
    base = 0.1
    got = [step_lr(ep, base, 12) for ep in range(12)]
    want = [0.1] * 10 + [0.001] + [1e-5]
    assert got == pytest.approx(want, rel=1e-12)


def test_step_lr_scaled_100_epochs():
    # warm-up round(2.5) = 2 epochs, milestones 80 and 90 (1-indexed)
    base = 0.1
    assert step_lr(_e(1), base, 100) == pytest.approx(0.05)
    assert step_lr(_e(2), base, 100) == pytest.approx(0.1)
    assert step_lr(_e(3), base, 100) == pytest.approx(0.1)
    assert step_lr(_e(80), base, 100) == pytest.approx(0.1)
    assert step_lr(_e(81), base, 100) == pytest.approx(0.001)
    assert step_lr(_e(90), base, 100) == pytest.approx(0.001)
    assert step_lr(_e(91), base, 100) == pytest.approx(1e-5)
    assert step_lr(_e(100), base, 100) == pytest.approx(1e-5)


def test_step_lr_explicit_warmup_and_milestones():
    assert step_lr(0, 0.1, 50, warmup=0) == pytest.approx(0.1)
    assert step_lr(_e(3), 0.1, 50, warmup=4, milestones=(10, 20)) == pytest.approx(0.075)
    assert step_lr(_e(10), 0.1, 50, warmup=4, milestones=(10, 20)) == pytest.approx(0.1)
    assert step_lr(_e(11), 0.1, 50, warmup=4, milestones=(10, 20)) == pytest.approx(0.001)
    assert step_lr(_e(21), 0.1, 50, warmup=4, milestones=(10, 20)) == pytest.approx(1e-5)


# --- cosine LR -----------------------------------------------------------------------------------

def test_cosine_lr_spec_values():
    base, epochs = 0.2, 90
    assert cosine_lr(0, base, epochs) == pytest.approx(0.2, abs=1e-12)
    assert cosine_lr(30, base, epochs) == pytest.approx(0.15, abs=1e-12)
    assert cosine_lr(45, base, epochs) == pytest.approx(0.1, abs=1e-12)
    assert cosine_lr(60, base, epochs) == pytest.approx(0.05, abs=1e-12)
    assert cosine_lr(75, base, epochs) == pytest.approx(0.0134, abs=5e-5)
    assert cosine_lr(89, base, epochs) == pytest.approx(6e-5, abs=5e-6)
    for ep in range(0, 90, 7):
        hand = base * (1 + math.cos(math.pi * ep / epochs)) / 2
        assert cosine_lr(ep, base, epochs) == pytest.approx(hand, rel=1e-12)


def test_cosine_lr_eta_min():
    assert cosine_lr(30, 0.2, 90, eta_min=0.01) == pytest.approx(0.01 + 0.19 * 0.75, rel=1e-12)


def test_learning_rate_dispatch_and_unknown():
    assert learning_rate("step", 0, 0.1, 200) == pytest.approx(0.02)
    assert learning_rate("cosine", 60, 0.2, 90) == pytest.approx(0.05)
    with pytest.raises(UserError):
        learning_rate("poly", 0, 0.1, 200)


# --- rho -----------------------------------------------------------------------------------------

def test_rho_none():
    for ep in (0, 5, 160, 199):
        assert rho_for_epoch("none", ep, 200, 0.3) == 0.3


def test_rho_linear_float16():
    epochs = 200
    first = rho_for_epoch("linear", 0, epochs, 0.1, min_rho=0.05, max_rho=0.8)
    last = rho_for_epoch("linear", epochs - 1, epochs, 0.1, min_rho=0.05, max_rho=0.8)
    assert first == _f16(0.05) and first == pytest.approx(0.049988, abs=1e-6) and first != 0.05
    assert last == _f16(0.8) and last == pytest.approx(0.79980, abs=1e-5) and last != 0.8
    for ep in (1, 50, 99, 150):
        e = ep + 1
        hand = 0.05 + (0.8 - 0.05) * (e - 1) / (epochs - 1)
        assert rho_for_epoch("linear", ep, epochs, 0.1, min_rho=0.05, max_rho=0.8) == _f16(hand)


def test_rho_step_cifar_boundaries():
    cases = [(1, 0.05), (5, 0.05), (6, 0.1), (160, 0.1), (161, 0.5), (180, 0.5), (181, 0.6),
             (200, 0.6)]
    for e, want in cases:
        assert rho_for_epoch("step", _e(e), 200, rho=0.99) == want, e


def test_rho_step_custom_steps_and_epochs():
    steps = (0.05, 0.1, 0.5, 0.7)
    kw = dict(rho_steps=steps, rho_step_epochs=(5, 60, 75))
    cases = [(0, 0.05), (4, 0.05), (5, 0.1), (59, 0.1), (60, 0.5), (74, 0.5), (75, 0.7), (89, 0.7)]
    for ep, want in cases:  # 0-indexed
        assert rho_for_epoch("step", ep, 90, rho=0.99, **kw) == want, ep


def test_rho_unknown_schedule():
    with pytest.raises(UserError):
        rho_for_epoch("cosine", 0, 200, 0.1)


def test_native_schedules_put_every_switch_where_the_reference_scripts_do() -> None:
    """CIFAR (200 epochs): warm-up 5, LR drops after 160 and 180, DRW at 160, step rho after 5, 160, 180;
    ImageNet-LT / iNat (90): DRW at 60, step rho after 5, 60, 75; a run of another length moves each
    boundary to round(mark * epochs / native), at least 1."""
    from ltsam.config import resolve
    from ltsam.data.catalog import native_schedule
    from ltsam.rules import default_drw_epoch
    from ltsam.schedules import STEP_LR_DROPS, STEP_LR_WARMUP

    cifar, inat = native_schedule("cifar10"), native_schedule("inat18")
    assert (cifar.epochs, cifar.drw, cifar.rho_steps) == (200, 160, (5, 160, 180))
    assert (STEP_LR_WARMUP, STEP_LR_DROPS) == (5, (160, 180))  # the step LR schedule's, on every data set
    assert (inat.epochs, inat.drw, inat.rho_steps) == (90, 60, (5, 60, 75))
    assert default_drw_epoch("cifar10", 200) == 160 and default_drw_epoch("cifar10", 10) == 8
    assert default_drw_epoch("imagenet_lt", 90) == 60 and default_drw_epoch("imagenet_lt", 9) == 6
    assert cifar.rho_boundaries(100) == (2, 80, 90)  # 2.5 rounds to 2
    assert inat.rho_boundaries(30) == (2, 20, 25)
    assert cifar.at(cifar.drw, resolve({"epochs": 10}).epochs) == 8
