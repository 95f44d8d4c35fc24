"""The fast training path equals the reference-style path it replaces.

- ``InMemoryBatchSource`` (device-resident uint8 set, batched crop/flip/normalise) yields the batches
  that torchvision's per-image transforms (the reference's CIFAR ones) give for the same draws;
- ltsam's SGD/SAM steps equal a textbook loop (plain SGD; SAM with cloned weights, perturb, restore);
- channels-last and ``torch.compile`` leave the result unchanged up to rounding, a GradScaler (fp32, SAM)
  leaves it unchanged bit for bit, and ``compile_with_fallback`` falls back cleanly when the trial step fails.

The training comparisons are about the algebra, so they train in float64: there three steps of the toy net
agree to ~1e-14, against a derived bound of ~1e-10 (``TRAIN_RTOL``); in float32 the other kernels' rounding,
amplified by three SAM steps, reached 1e-4 at the full learning rate, above any bound that still means much.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from ltsam.acceleration import compile_with_fallback
from ltsam.data.augment import draw_crop_flip
from ltsam.data.sources import InMemoryBatchSource, epoch_generator
from ltsam.losses import build_loss
from ltsam.models import NormedLinear
from ltsam.objectives import supervised_objective
from ltsam.optim import StepSettings, build_step
from tests.tolerances import rtol

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
COUNTS = [30, 17, 10, 6]  # a small long-tailed set, 63 images: batches of 16, 16, 16 and 15
LR, MOMENTUM, WD, RHO = 0.1, 0.9, 5e-4, 0.5
DT = torch.float64
# Two float64 trainings of TinyNet (3 steps) that sum in other orders (kernels, layouts, reduction of the
# gradient norm): the longest sum is a first convolution's weight gradient over 16 images of 32x32 pixels;
# stages: 3 steps x 2 SAM passes x forward and backward x 4 layers. Weights, batch-norm statistics and losses
# are of order one, so the bound serves as rtol and atol. (ltsam's steps round the logits to float32 for the
# loss; logits ~1e-15 apart round alike unless one lies that close to a float32 rounding boundary, a chance
# of ~1e-8 per logit.)
TRAIN_RTOL = rtol(DT, n=16 * 32 * 32, stages=3 * 2 * 2 * 4)


def _data(n_per_class=COUNTS, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(n_per_class)])
    images = torch.randint(0, 256, (len(targets), 3, size, size), dtype=torch.uint8, generator=g)
    return images, targets


def _source(images, targets, batch_size=16, seed=7, channels_last=False, drop_last=False):
    return InMemoryBatchSource(images, targets, batch_size, torch.tensor(MEAN), torch.tensor(STD),
                               pad=4, flip=True, seed=seed, drop_last=drop_last, channels_last=channels_last)


def _reference_image(img_hwc: np.ndarray, row: int, col: int, flip: bool) -> torch.Tensor:
    """torchvision's per-image chain on a PIL image: pad 4 zeros, crop, hflip, ToTensor, Normalize."""
    img = TF.pad(Image.fromarray(img_hwc), 4, fill=0)
    h, w = img_hwc.shape[:2]
    img = TF.crop(img, row, col, h, w)
    if flip:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), MEAN, STD)


# ------------------------------------------------------------------ (1) same batches
@pytest.mark.parametrize("epoch", [0, 3])
def test_batched_source_equals_per_image_transforms(epoch):
    images, targets = _data()
    source = _source(images, targets)
    source.set_epoch(epoch)
    batches = list(source)
    assert len(batches) == len(source) == math.ceil(len(targets) / 16)

    # The draws, re-created from the same generator sequence the source reads.
    g = epoch_generator(source.seed, epoch)
    order = torch.randperm(len(targets), generator=g)
    hwc = images.permute(0, 2, 3, 1).numpy()  # the reference's data array layout
    seen = []
    flipped = 0
    for b, (x, y) in enumerate(batches):
        idx = order[b * 16:(b + 1) * 16]
        rows, cols, flips = draw_crop_flip(len(idx), 4, True, g)
        assert rows.min() >= 0 and rows.max() <= 8 and cols.min() >= 0 and cols.max() <= 8
        expected = torch.stack([_reference_image(hwc[int(i)], int(r), int(c), bool(f))
                                for i, r, c, f in zip(idx, rows, cols, flips)])
        assert x.dtype == torch.float32 and x.shape == expected.shape
        # Elementwise /255, -mean, /std in float32, both sides: at most 3 roundings of terms up to 1 / std.
        torch.testing.assert_close(x, expected, rtol=0, atol=rtol(torch.float32, stages=3) / min(STD))
        assert torch.equal(y, targets[idx])
        seen.append(idx)
        flipped += int(flips.sum())
    assert sorted(torch.cat(seen).tolist()) == list(range(len(targets)))  # one epoch = a permutation
    assert 0 < flipped < len(targets)  # both branches of the flip were exercised


def test_epochs_differ_and_repeat():
    images, targets = _data()
    a = [x for x, _ in _source(images, targets)]
    again = [x for x, _ in _source(images, targets)]
    src = _source(images, targets)
    src.set_epoch(1)
    other = [x for x, _ in src]
    assert all(torch.equal(p, q) for p, q in zip(a, again))
    assert not torch.equal(a[0], other[0])


def test_channels_last_source_same_values():
    images, targets = _data()
    plain = list(_source(images, targets))
    cl = list(_source(images, targets, channels_last=True))
    for (x, y), (xc, yc) in zip(plain, cl):
        assert xc.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, xc) and torch.equal(y, yc)


# ------------------------------------------------------------------ models and textbook loops
class TinyNet(nn.Module):
    """conv-BN-ReLU, strided conv-BN-ReLU, pool, cosine head: resnet32-LDAM in miniature (batch norm
    updated in both SAM passes, logits in [-1, 1] so that LDAM's scale 30 stays well conditioned)."""

    def __init__(self, num_classes: int = len(COUNTS), width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = NormedLinear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def _tiny(seed: int = 0, dtype: torch.dtype = DT) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet().to(dtype).train()


def _textbook_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE, or LDAM written out: m_c ∝ n_c^(-1/4) with max 0.5, CE(30 (z - m_y e_y))."""
    if name == "ce":
        return F.cross_entropy(logits, y)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    m = (n ** -0.25) * (0.5 / (n ** -0.25).max())
    z = logits.clone()
    z[torch.arange(len(y)), y] -= m.float()[y]
    return F.cross_entropy(30.0 * z, y)


def _textbook_train(model: nn.Module, batches, loss_name: str, sam: bool) -> list[float]:
    """The reference loop: forward, loss, backward, SGD; SAM as davda54 does it (per-parameter
    clone of w, w += rho g / ||g||, second pass, w restored from the clone, base SGD step). The loss is
    taken in the logits' dtype (float64 here), as ltsam's steps take it (``ltsam.objectives.for_loss`` raises only
    half-precision logits to float32)."""
    params = list(model.parameters())
    sgd = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    losses = []
    for x, y in batches:
        loss = _textbook_loss(loss_name, model(x), y)
        sgd.zero_grad()
        loss.backward()
        if sam:
            with torch.no_grad():
                norm = torch.norm(torch.stack([p.grad.norm(2) for p in params if p.grad is not None]), 2)
                old = {}
                for p in params:
                    if p.grad is None:
                        continue
                    old[p] = p.data.clone()
                    p.add_(p.grad * (RHO / (norm + 1e-12)))
            sgd.zero_grad()
            loss = _textbook_loss(loss_name, model(x), y)
            loss.backward()
            for p in params:
                if p in old:
                    p.data = old[p]
        sgd.step()
        losses.append(loss.item())
    return losses


def _ltsam_train(model: nn.Module, batches, loss_name: str, sam: bool, scaler=None,
                 net: nn.Module | None = None) -> list[float]:
    criterion = build_loss(loss_name, COUNTS)
    step = build_step("sam" if sam else "sgd", model.parameters(),
                      StepSettings(lr=LR, momentum=MOMENTUM, wd=WD, rho=RHO, scaler=scaler))
    net = model if net is None else net
    return [float(step(net, supervised_objective(x, y, criterion, step.autocast)).last.report.detach())
            for x, y in batches]


def _assert_same_model(a: nn.Module, b: nn.Module | dict, rtol: float, atol: float) -> None:
    sa, sb = a.state_dict(), (b if isinstance(b, dict) else b.state_dict())
    assert sa.keys() == sb.keys()
    for k in sa:  # weights and batch-norm running statistics
        torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def _batches(n: int = 3, channels_last: bool = False, dtype: torch.dtype = DT):
    images, targets = _data()
    batches = list(_source(images, targets, channels_last=channels_last, drop_last=True))[:n]
    return [(x.to(dtype), y) for x, y in batches]  # .to keeps the memory format


# ------------------------------------------------------------------ (2) ltsam step = textbook loop
@pytest.mark.parametrize("sam", [False, True], ids=["sgd", "sam"])
@pytest.mark.parametrize("loss_name", ["ce", "ldam"])
def test_ltsam_step_equals_textbook_loop(sam, loss_name):
    batches = _batches()
    assert len(batches) == 3
    ours, ref = _tiny(), _tiny()
    got = _ltsam_train(ours, batches, loss_name, sam)
    want = _textbook_train(ref, batches, loss_name, sam)
    np.testing.assert_allclose(got, want, rtol=TRAIN_RTOL, atol=TRAIN_RTOL)
    _assert_same_model(ours, ref, rtol=TRAIN_RTOL, atol=TRAIN_RTOL)
    assert not torch.equal(ours.state_dict()["fc.weight"], _tiny().state_dict()["fc.weight"])  # it trained


# ------------------------------------------------------------------ (3) channels-last
@pytest.mark.parametrize("sam", [False, True], ids=["sgd", "sam"])
def test_channels_last_matches_contiguous(sam):
    plain, cl = _tiny(), _tiny().to(memory_format=torch.channels_last)
    assert cl.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    batches = _batches(channels_last=True)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    got = _ltsam_train(cl, batches, "ce", sam)
    want = _ltsam_train(plain, _batches(), "ce", sam)
    np.testing.assert_allclose(got, want, rtol=TRAIN_RTOL, atol=TRAIN_RTOL)
    _assert_same_model(cl, plain, rtol=TRAIN_RTOL, atol=TRAIN_RTOL)


# ------------------------------------------------------------------ (4) torch.compile
def test_compiled_model_matches_eager():
    batches = _batches()
    x0, y0 = batches[0]
    eager, model = _tiny(), _tiny()

    def trial(net: nn.Module) -> None:  # what the trainer does: one CE forward/backward
        net.train()
        F.cross_entropy(net(x0), y0).backward()

    net, ok = compile_with_fallback(model, trial)
    if not ok:
        pytest.skip("torch.compile is unavailable on this platform (compile_with_fallback fell back to eager)")
    # The trial left no trace: weights, running statistics and gradients are as before it.
    _assert_same_model(model, eager, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    got = _ltsam_train(model, batches, "ce", True, net=net)
    want = _ltsam_train(eager, batches, "ce", True)
    np.testing.assert_allclose(got, want, rtol=TRAIN_RTOL, atol=TRAIN_RTOL)
    _assert_same_model(model, eager, rtol=TRAIN_RTOL, atol=TRAIN_RTOL)


# ------------------------------------------------------------------ (5) GradScaler, fallback
def test_sam_through_grad_scaler_equals_unscaled():
    """In fp32 (where the scaler is used): bit for bit. Multiplying by 2^10 and by 2^-10 is exact and commutes with
    every rounding in between (no overflow or subnormals here), SAM's ascent is invariant to the common scale
    (rho g / ||g||; the 1e-12 is far below an ulp of ||g||), and the scaler unscales before the base step."""
    batches = _batches(dtype=torch.float32)
    scaled, plain = _tiny(dtype=torch.float32), _tiny(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    got = _ltsam_train(scaled, batches, "ldam", True, scaler=scaler)
    want = _ltsam_train(plain, batches, "ldam", True)
    assert got == want
    _assert_same_model(scaled, plain, rtol=0, atol=0)
    assert scaler.get_scale() == 2.0**10  # no overflow, no step skipped (growth needs 2000 good steps)


def test_compile_fallback_when_trial_raises():
    model = _tiny()
    before = copy.deepcopy(model.state_dict())
    x, y = _batches(1)[0]

    def trial(net: nn.Module) -> None:
        # Touch what a real trial touches (running statistics, gradients) with the eager model,
        # so no compilation happens here, then fail as a broken compiler would.
        model.train()
        F.cross_entropy(model(x), y).backward()
        assert model.body[1].num_batches_tracked.item() == 1
        raise RuntimeError("simulated inductor failure")

    with pytest.warns(UserWarning, match="torch.compile failed"):
        net, ok = compile_with_fallback(model, trial)
    assert ok is False and net is model
    _assert_same_model(model, before, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_compile_unavailable_falls_back(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no backend")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = _tiny()
    with pytest.warns(UserWarning, match="torch.compile unavailable"):
        net, ok = compile_with_fallback(model, lambda net: None)
    assert ok is False and net is model
