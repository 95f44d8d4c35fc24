"""Long-tail profiles, the reference's image selection, augmentation and the in-memory source.

Expected values come from the reference code (the class counts it gives, the reference's selection procedure
re-implemented here with numpy's global legacy RNG, torchvision's functional transforms).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from ltsam.data.augment import crop_flip, draw_crop_flip, normalize
from ltsam.data.profiles import lt_counts, lt_indices
from ltsam.data.sources import InMemoryBatchSource
from ltsam.errors import UserError
from tests.tolerances import rtol

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# float32 (x / 255 - mean) / std against the float64 hand value: mean and std rounded to float32, then three
# elementwise roundings, of terms up to 1 / std.
NORMALIZE_ATOL = rtol(torch.float32, stages=5) / min(CIFAR_STD)

# --- lt_counts -----------------------------------------------------------------------------------

CIFAR10_F001 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_F002 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
CIFAR100_F001 = [
    500, 477, 455, 434, 415, 396, 378, 361, 344, 328, 314, 299, 286, 273, 260, 248,
    237, 226, 216, 206, 197, 188, 179, 171, 163, 156, 149, 142, 135, 129, 123, 118,
    112, 107, 102, 98, 93, 89, 85, 81, 77, 74, 70, 67, 64, 61, 58, 56, 53, 51,
    48, 46, 44, 42, 40, 38, 36, 35, 33, 32, 30, 29, 27, 26, 25, 24, 23, 22, 21, 20,
    19, 18, 17, 16, 15, 15, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8, 7,
    7, 7, 6, 6, 6, 6, 5, 5, 5, 5,
]


def test_spec_cifar100_list_is_complete():
    assert len(CIFAR100_F001) == 100 and sum(CIFAR100_F001) == 10847


def test_exp_cifar10():
    assert lt_counts(5000.0, 10, "exp", 0.01) == CIFAR10_F001
    assert sum(lt_counts(5000.0, 10, "exp", 0.01)) == 12406
    assert lt_counts(5000.0, 10, "exp", 0.02) == CIFAR10_F002
    assert sum(CIFAR10_F002) == 13996
    c01 = lt_counts(5000.0, 10, "exp", 0.1)
    assert sum(c01) == 20431 and c01[-2:] == [645, 500]


def test_exp_cifar100():
    counts = lt_counts(500.0, 100, "exp", 0.01)
    assert counts == CIFAR100_F001
    assert sum(counts) == 10847
    assert counts[:5] == [500, 477, 455, 434, 415] and counts[-5:] == [6, 5, 5, 5, 5]
    c002 = lt_counts(500.0, 100, "exp", 0.02)
    assert sum(c002) == 12608 and c002[0] == 500 and c002[-1] == 10
    assert sum(lt_counts(500.0, 100, "exp", 0.1)) == 19573


def test_exp_truncates_not_rounds():
    # 5000 * 0.01 ** (2/9) = 1796.9...: truncation gives 1796, rounding would give 1797.
    assert 5000 * 0.01 ** (2 / 9) > 1796.5
    assert lt_counts(5000.0, 10, "exp", 0.01)[2] == 1796
    assert lt_counts(5000.0, 10, "exp", 0.01)[4] == 645  # 645.77...


def test_step_and_none_profiles():
    c10 = lt_counts(5000.0, 10, "step", 0.01)
    assert c10 == [5000] * 5 + [50] * 5 and sum(c10) == 25250
    c100 = lt_counts(500.0, 100, "step", 0.01)
    assert c100 == [500] * 50 + [5] * 50 and sum(c100) == 25250
    assert lt_counts(5000.0, 10, "none", 0.01) == [5000] * 10
    assert lt_counts(500.0, 100, "none", 0.5) == [500] * 100
    assert lt_counts(5000.0, 10, "exp", 1.0) == [5000] * 10


def test_imb_type_case_insensitive():
    assert lt_counts(5000.0, 10, "Exp", 0.01) == CIFAR10_F001


@pytest.mark.parametrize("f", [0.0, -0.1, 1.5, 100.0])
def test_bad_imb_factor_raises(f):
    with pytest.raises(UserError):
        lt_counts(5000.0, 10, "exp", f)


def test_unknown_imb_type_raises():
    with pytest.raises(UserError):
        lt_counts(5000.0, 10, "linear", 0.01)


# --- lt_indices ----------------------------------------------------------------------------------

def _reference_selection(targets: list[int], counts: list[int], rand_number: int) -> np.ndarray:
    """imbalance_cifar.py's procedure, with the GLOBAL legacy RNG (state saved and restored)."""
    saved = np.random.get_state()
    try:
        np.random.seed(rand_number)
        t = np.array(targets, dtype=np.int64)
        kept = []
        for c, n in enumerate(counts):
            idx = np.where(t == c)[0]
            np.random.shuffle(idx)
            kept.append(idx[:n])
        return np.concatenate(kept)
    finally:
        np.random.set_state(saved)


def _cifar_like_labels(per_class: int = 500, num_classes: int = 10, seed: int = 42) -> list[int]:
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    return labels.tolist()


@pytest.mark.parametrize("rand_number", [0, 3])
def test_lt_indices_matches_reference_procedure(rand_number):
    targets = _cifar_like_labels()
    counts = lt_counts(500.0, 10, "exp", 0.01)
    got = lt_indices(targets, counts, rand_number)
    want = _reference_selection(targets, counts, rand_number)
    np.testing.assert_array_equal(got, want)
    assert len(got) == sum(counts)
    # class blocks in label order
    kept_labels = np.asarray(targets)[got]
    expect_labels = np.repeat(np.arange(10), counts)
    np.testing.assert_array_equal(kept_labels, expect_labels)


def test_lt_indices_depends_on_rand_number():
    targets = _cifar_like_labels()
    counts = lt_counts(500.0, 10, "exp", 0.01)
    assert not np.array_equal(lt_indices(targets, counts, 0), lt_indices(targets, counts, 3))


def test_lt_indices_leaves_global_rng_untouched():
    np.random.seed(1234)
    before = np.random.get_state()
    lt_indices(_cifar_like_labels(), lt_counts(500.0, 10, "exp", 0.01), 0)
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


# --- augmentation --------------------------------------------------------------------------------

def _uint8_batch(b=4, c=3, h=8, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def test_crop_flip_matches_torchvision():
    pad = 4
    images = _uint8_batch(b=8, h=8, w=10)
    _, _, h, w = images.shape
    cases = [(0, 0, False), (0, 0, True), (2 * pad, 2 * pad, False), (2 * pad, 2 * pad, True),
             (0, 2 * pad, True), (2 * pad, 0, False), (3, 5, True), (pad, pad, False)]
    rows = torch.tensor([r for r, _, _ in cases])
    cols = torch.tensor([c for _, c, _ in cases])
    flips = torch.tensor([f for _, _, f in cases])
    out = crop_flip(images, rows, cols, flips, pad)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for k, (i, j, f) in enumerate(cases):
        ref = TF.crop(TF.pad(images[k], [pad], fill=0), i, j, h, w)
        if f:
            ref = TF.hflip(ref)
        assert torch.equal(out[k], ref), (i, j, f)


def test_crop_flip_by_hand_corner():
    # Offset (0, 0) with pad 4: the top-left 4x4 block is zero padding; the image starts at (4, 4).
    img = _uint8_batch(b=1, h=8, w=8) | 1  # no zeros in the image itself
    out = crop_flip(img, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), 4)
    assert int(out[0, :, :4, :].max()) == 0 and int(out[0, :, :, :4].max()) == 0
    assert torch.equal(out[0, :, 4:, 4:], img[0, :, :4, :4])
    flipped = crop_flip(img, torch.tensor([4]), torch.tensor([4]), torch.tensor([True]), 4)
    assert torch.equal(flipped[0], img[0].flip(-1))


def test_crop_flip_float_input():
    images = _uint8_batch(b=2, h=6, w=6).float()
    rows, cols, flips = torch.tensor([1, 7]), torch.tensor([8, 0]), torch.tensor([True, False])
    out = crop_flip(images, rows, cols, flips, 4)
    for k, (i, j, f) in enumerate([(1, 8, True), (7, 0, False)]):
        ref = TF.crop(TF.pad(images[k], [4], fill=0), i, j, 6, 6)
        ref = TF.hflip(ref) if f else ref
        assert torch.equal(out[k], ref)


def test_draw_crop_flip_distribution():
    pad, n = 4, 45_000
    rows, cols, flips = draw_crop_flip(n, pad, True, torch.Generator().manual_seed(0))
    k = 2 * pad + 1
    for offsets in (rows, cols):
        assert int(offsets.min()) == 0 and int(offsets.max()) == 2 * pad
        counts = np.bincount(offsets.numpy(), minlength=k)
        assert len(counts) == k
        expected = n / k
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 40.0  # 8 d.o.f.: mean 8, P(chi2 > 40) ~ 3e-6
    assert flips.dtype == torch.bool
    assert abs(float(flips.float().mean()) - 0.5) < 0.02
    # rows and cols are not the same draw
    assert not torch.equal(rows, cols)


def test_draw_crop_flip_no_flip_and_seeded():
    _, _, flips = draw_crop_flip(100, 4, False, torch.Generator().manual_seed(1))
    assert not bool(flips.any())
    a = draw_crop_flip(50, 4, True, torch.Generator().manual_seed(7))
    b = draw_crop_flip(50, 4, True, torch.Generator().manual_seed(7))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


def test_normalize_matches_hand():
    images = _uint8_batch(b=3, h=4, w=5)
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    x = images.numpy().astype(np.float64)
    want = np.empty_like(x)
    for ch in range(3):
        want[:, ch] = (x[:, ch] / 255.0 - CIFAR_MEAN[ch]) / CIFAR_STD[ch]
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=NORMALIZE_ATOL)
    assert images.dtype == torch.uint8  # input untouched


# --- InMemoryBatchSource -------------------------------------------------------------------------

def _source(n=53, batch=8, seed=0, **kw):
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g)
    targets = kw.pop("targets", torch.arange(n))  # a target per sample identifies it
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    return InMemoryBatchSource(images, targets, batch, mean, std, seed=seed, **kw), images


def test_source_epoch_covers_every_index_once():
    src, _ = _source()
    assert len(src) == 7  # ceil(53 / 8)
    seen = torch.cat([y for _, y in src])
    assert sorted(seen.tolist()) == list(range(53))
    sizes = [len(y) for _, y in src]
    assert sizes == [8] * 6 + [5]


def test_source_drop_last():
    src, _ = _source(drop_last=True)
    assert len(src) == 6
    seen = torch.cat([y for _, y in src]).tolist()
    assert len(seen) == 48 and len(set(seen)) == 48


def test_source_images_match_targets_without_augmentation():
    src, images = _source(pad=0, flip=False)
    mean, std = np.array(CIFAR_MEAN), np.array(CIFAR_STD)
    for x, y in src:
        raw = images[y].numpy().astype(np.float64) / 255.0
        want = (raw - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(x.numpy(), want, atol=NORMALIZE_ATOL, rtol=0)


def test_source_same_seed_epoch_identical_other_epoch_differs():
    a, _ = _source(seed=3)
    b, _ = _source(seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # iterating again gives the same epoch again
    first = [y.clone() for _, y in a]
    again = [y.clone() for _, y in a]
    assert all(torch.equal(u, v) for u, v in zip(first, again, strict=True))
    b.set_epoch(3)
    other = torch.cat([y for _, y in b])
    assert not torch.equal(torch.cat(first), other)
    c, _ = _source(seed=4)
    c.set_epoch(2)
    assert not torch.equal(torch.cat([y for _, y in c]), torch.cat(first))


def test_source_class_balanced_sample_weights():
    counts = [400, 100, 25, 5]
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    weights = torch.tensor([1.0 / counts[int(t)] for t in targets])
    src, _ = _source(n=len(targets), batch=106, targets=targets, sample_weights=weights)
    drawn = torch.cat([y for _, y in src])
    assert len(drawn) == len(targets)
    freq = np.bincount(drawn.numpy(), minlength=4) / len(drawn)
    # each class ~ 1/4 (530 draws: sd ~ 0.019); without re-sampling class 3 would be ~ 0.009
    assert np.all(np.abs(freq - 0.25) < 0.08), freq
