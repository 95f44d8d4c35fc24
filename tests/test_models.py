"""Models (the reference's models/resnet_cifar.py) and metrics (top-k, shot groups) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ltsam.metrics import (
    confusion_matrix,
    group_accuracy,
    per_class_accuracy,
    shot_groups,
    topk_correct,
)
from ltsam.models import NormedLinear, build_model, resnet_cifar
from ltsam.models.resnet_cifar import BasicBlock
from tests.tolerances import rtol

# NormedLinear's float32 cosine against the float64 hand value: the norms of x and of a weight column (5 terms
# each), the divisions, the 5-term dot product, and the rounding of 5 * x; terms of size <= 1 (unit vectors).
COSINE = rtol(torch.float32, n=5, stages=4)

# --- NormedLinear --------------------------------------------------------------------------------


def test_normed_linear_init_unit_columns():
    torch.manual_seed(0)
    layer = NormedLinear(64, 10)
    w = layer.weight.detach().numpy().astype(np.float64)
    assert w.shape == (64, 10)
    for c in range(10):  # renorm in float32: a 64-term norm, then the rescaling
        assert math.sqrt(sum(v * v for v in w[:, c])) == pytest.approx(1.0, abs=rtol(torch.float32, n=64, stages=2))
    assert list(layer.parameters()) == [layer.weight]  # no bias


def test_normed_linear_is_cosine_similarity():
    torch.manual_seed(1)
    layer = NormedLinear(5, 3)
    with torch.no_grad():  # columns not unit-norm: the forward must still normalise them
        layer.weight.mul_(torch.tensor([0.5, 2.0, 7.0]))
    x = torch.randn(4, 5) * 3.0
    out = layer(x).detach().numpy()
    xs = x.numpy().astype(np.float64)
    ws = layer.weight.detach().numpy().astype(np.float64)
    for i in range(4):
        for c in range(3):
            dot = sum(xs[i, k] * ws[k, c] for k in range(5))
            nx = math.sqrt(sum(v * v for v in xs[i]))
            nw = math.sqrt(sum(v * v for v in ws[:, c]))
            assert out[i, c] == pytest.approx(dot / (nx * nw), abs=COSINE)
    assert out.min() >= -1.0 - COSINE and out.max() <= 1.0 + COSINE
    # scale invariance in x
    torch.testing.assert_close(layer(5 * x), layer(x), atol=COSINE, rtol=0)


def test_normed_linear_extremes():
    layer = NormedLinear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    out = layer(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))


# --- ResNet-32 -----------------------------------------------------------------------------------

def _hand_resnet_params(n_blocks: int, num_classes: int, use_norm: bool = False) -> int:
    """Parameter count of the reference's ResNet_s: convs without bias, BN weight+bias, linear head."""
    def conv(cin, cout):
        return cin * cout * 9

    def bn(ch):
        return 2 * ch

    total = conv(3, 16) + bn(16)
    cin = 16
    for planes in (16, 32, 64):
        for _ in range(n_blocks):
            total += conv(cin, planes) + bn(planes) + conv(planes, planes) + bn(planes)
            cin = planes  # option-A shortcut: no parameters
    total += 64 * num_classes + (0 if use_norm else num_classes)
    return total


def test_resnet32_parameter_count():
    model = resnet_cifar("resnet32", 10)
    got = sum(p.numel() for p in model.parameters())
    want = _hand_resnet_params(5, 10)
    assert want == 464_154
    assert got == want
    assert abs(got - 0.46e6) < 0.01e6
    normed = resnet_cifar("resnet32", 100, use_norm=True)
    assert sum(p.numel() for p in normed.parameters()) == _hand_resnet_params(5, 100, True)
    assert isinstance(normed.linear, NormedLinear)


@pytest.mark.parametrize(("name", "n"), [("resnet20", 3), ("resnet44", 7), ("resnet56", 9)])
def test_other_depths_parameter_count(name, n):
    model = build_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) == _hand_resnet_params(n, 10)


def test_resnet32_output_shape_and_layout():
    torch.manual_seed(0)
    model = resnet_cifar("resnet32", 10).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(c.bias is None for c in convs)  # 1 + 3 * 5 * 2
    assert isinstance(model.linear, nn.Linear) and model.linear.bias is not None
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        feats = model.features(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert feats.shape == (2, 64)
    assert torch.isfinite(out).all()


def test_option_a_shortcut_parameter_free_and_correct():
    torch.manual_seed(2)
    block = BasicBlock(16, 32, stride=2)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    n_params = sum(p.numel() for p in block.parameters())
    assert n_params == 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32
    x = torch.randn(2, 16, 8, 8)
    sc = block.shortcut(x)
    assert sc.shape == (2, 32, 4, 4)
    # hand: every second pixel, 8 zero channels (planes/4) on each side
    for b in range(2):
        for ch in range(32):
            for i in range(4):
                for j in range(4):
                    want = float(x[b, ch - 8, 2 * i, 2 * j]) if 8 <= ch < 24 else 0.0
                    assert float(sc[b, ch, i, j]) == want
    same = BasicBlock(16, 16, stride=1)
    assert torch.equal(same.shortcut(x), x)


# --- metrics -------------------------------------------------------------------------------------

def _labels(seed=0, n=200, c=6):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, n)
    p = np.where(rng.random(n) < 0.6, t, rng.integers(0, c, n))
    return p, t


def test_confusion_matrix_and_per_class_accuracy():
    c = 6
    p, t = _labels(c=c)
    t[t == 5] = 4  # class 5 has no test images
    conf = confusion_matrix(torch.tensor(p), torch.tensor(t), c)
    hand = [[0] * c for _ in range(c)]
    for pi, ti in zip(p, t, strict=True):
        hand[int(ti)][int(pi)] += 1  # rows: true, columns: predicted
    assert conf.tolist() == hand
    acc = per_class_accuracy(conf)
    for k in range(c):
        row = sum(hand[k])
        if row == 0:
            assert acc[k] is None
        else:
            assert acc[k] == pytest.approx(100.0 * hand[k][k] / row, rel=1e-12)
    assert acc[5] is None


def test_confusion_matrix_is_not_transposed():
    conf = confusion_matrix(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 1]), 2)
    assert conf.tolist() == [[0, 2], [0, 1]]
    assert per_class_accuracy(conf) == [0.0, 100.0]


def test_shot_group_boundaries():
    counts = [500, 101, 100, 50, 20, 19, 5, 1]
    groups = shot_groups(counts)
    assert groups == {"many": [0, 1], "medium": [2, 3, 4], "few": [5, 6, 7]}


def test_group_accuracy():
    counts = [500, 101, 100, 50, 20, 19, 5]
    acc = [90.0, 80.0, 60.0, 40.0, None, 10.0, 20.0]
    out = group_accuracy(acc, counts)
    assert out["many"] == pytest.approx(85.0)
    assert out["medium"] == pytest.approx(50.0)  # class 4 has no test images: skipped
    assert out["few"] == pytest.approx(15.0)
    assert group_accuracy([50.0, 70.0], [1000, 500]) == {"many": 60.0, "medium": None, "few": None}


def test_topk_correct_against_hand_counts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g)
    targets = torch.randint(0, 10, (300,), generator=g)
    got = topk_correct(logits, targets, ks=(1, 2, 5))
    lg = logits.numpy()
    hand = []
    for k in (1, 2, 5):
        hits = 0
        for row, y in zip(lg, targets.tolist(), strict=True):
            rank = sum(1 for v in row if v > row[y])  # classes strictly above the target
            hits += rank < k
        hand.append(hits)
    assert got == hand
    assert got[0] < got[1] < got[2]


def test_topk_k_capped_at_num_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    targets = torch.tensor([2, 0])
    assert topk_correct(logits, targets, ks=(1, 5)) == [1, 2]
