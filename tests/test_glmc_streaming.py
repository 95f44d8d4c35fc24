"""GLMC on list-file data sets (ImageNet-LT / iNaturalist): its two-view augmentation, the paired
streaming loaders, sharding under DDP, and `ltsam train --method glmc` end to end on generated JPEGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_glmc import b_class_frequencies
from test_listfile import make_list_dataset
from torch.utils.data import Dataset

from ltsam.cli import main
from ltsam.glmc.source import GLMCBatchSource, GLMCStreamSource
from ltsam.glmc.transforms import RandomGaussianBlur, TwoViews, glmc_train_transform


# --------------------------------------------------------------------------- transforms
def test_glmc_imagenet_transform_has_the_reference_ops_in_order() -> None:
    from torchvision import transforms as T

    ops = glmc_train_transform(224, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)).transforms
    assert [type(t) for t in ops] == [T.RandomResizedCrop, T.RandomApply, T.RandomGrayscale, T.RandomApply,
                                      T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert ops[0].size == (224, 224)
    jitter_apply, blur_apply = ops[1], ops[3]
    assert jitter_apply.p == 1.0 and isinstance(jitter_apply.transforms[0], T.ColorJitter)
    jitter = jitter_apply.transforms[0]
    assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4) and jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None
    assert ops[2].p == 0.2
    assert blur_apply.p == 0.5 and isinstance(blur_apply.transforms[0], RandomGaussianBlur)
    assert blur_apply.transforms[0].sigma == (0.1, 2.0)
    assert list(ops[6].mean) == [0.1, 0.2, 0.3] and list(ops[6].std) == [0.4, 0.5, 0.6]


def _noise_image(size: int = 24):
    from PIL import Image

    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_blur_is_pils_gaussian_blur_with_the_drawn_radius() -> None:
    from PIL import ImageFilter

    img = _noise_image()
    fixed = RandomGaussianBlur((1.3, 1.3))
    expected = img.filter(ImageFilter.GaussianBlur(radius=1.3))
    assert np.array_equal(np.asarray(fixed(img)), np.asarray(expected))
    # blurring lowers the pixel-to-pixel variation of noise, more for larger sigma
    tv = [np.abs(np.diff(np.asarray(RandomGaussianBlur((s, s))(img), dtype=float), axis=1)).mean() for s in (0.5, 2.0)]
    noise_tv = np.abs(np.diff(np.asarray(img, dtype=float), axis=1)).mean()
    assert noise_tv > tv[0] > tv[1]


def test_blur_sigma_is_uniform_on_its_range() -> None:
    torch.manual_seed(0)
    blur = RandomGaussianBlur((0.1, 2.0))
    draws = np.array([blur.draw_sigma() for _ in range(4000)])
    assert draws.min() >= 0.1 and draws.max() <= 2.0
    assert abs(draws.mean() - 1.05) < 0.03 and abs(draws.var() - 1.9 ** 2 / 12) < 0.02
    with pytest.raises(ValueError):
        RandomGaussianBlur((2.0, 0.1))


def test_two_views_are_independent_draws_of_one_image() -> None:
    torch.manual_seed(0)
    two = TwoViews(glmc_train_transform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    v1, v2 = two(_noise_image(40))
    assert v1.shape == v2.shape == (3, 16, 16)
    assert not torch.equal(v1, v2)
    same = TwoViews(lambda img: np.asarray(img).sum())
    a, b = same(_noise_image())
    assert a == b


# --------------------------------------------------------------------------- the streaming source
class _IndexViews(Dataset):
    """Sample i -> ((full(i), full(i) + 0.5), label_i): the views carry their dataset index."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.full((1, 2, 2), float(i))
        return (x, x + 0.5), int(self.labels[i])


def _labels(counts):
    return torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])


def _stream(labels, **kw):
    args = dict(batch_size=8, seed=5, device="cpu", resample_q=0.0, workers=0)
    args.update(kw)
    return GLMCStreamSource(_IndexViews(labels), labels, **args)


def _index(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long()


def test_stream_source_pairs_a_permutation_with_weighted_draws() -> None:
    labels = _labels([20, 10, 6, 4])
    src = _stream(labels)
    assert len(src) == 5
    src.set_epoch(1)
    batches = list(src)
    seen_a, seen_b = [], []
    for (a1, a2, ya), (b1, b2, yb) in batches:
        ia, ib = _index(a1), _index(b1)
        assert torch.equal(a2, a1 + 0.5) and torch.equal(b2, b1 + 0.5)  # both views of the same samples
        assert torch.equal(labels[ia], ya) and torch.equal(labels[ib], yb)
        assert len(yb) == len(ya)
        seen_a.append(ia)
        seen_b.append(ib)
    assert sorted(torch.cat(seen_a).tolist()) == list(range(40))  # A: every image once
    b_all = torch.cat(seen_b)
    assert len(b_all) == 40 and len(set(b_all.tolist())) < 40  # B: with replacement
    assert not torch.equal(torch.cat(seen_a), b_all)  # the two streams are drawn apart
    # the same (seed, epoch) gives the same batches; another epoch another order
    again = list(_with_epoch(_stream(labels), 1))
    assert all(torch.equal(x[0][0], y[0][0]) and torch.equal(x[1][0], y[1][0]) for x, y in zip(batches, again))
    other = list(_with_epoch(_stream(labels), 2))
    assert any(not torch.equal(x[0][0], y[0][0]) for x, y in zip(batches, other))


def _with_epoch(src, epoch):
    src.set_epoch(epoch)
    return src


def test_stream_source_b_follows_class_balancing_weights() -> None:
    counts = [120, 60, 40, 20]
    labels = _labels(counts)
    src = _stream(labels, batch_size=60, resample_q=1.0)
    epochs = 8
    freq = b_class_frequencies(src, epochs=epochs, num_classes=4)
    # q = 1: classes equally often. Statistical tolerance: epochs * len(labels) i.i.d. draws (with replacement),
    # so each class's frequency is a binomial proportion, standard error sqrt(p (1 - p) / N); allow four.
    four_se = 4 * math.sqrt(0.25 * 0.75 / (epochs * len(labels)))
    assert torch.allclose(freq, torch.full((4,), 0.25), rtol=0, atol=four_se), freq


@pytest.mark.parametrize("kind", ["stream", "memory"])
def test_ranks_take_disjoint_slices_of_one_global_order(kind: str) -> None:
    labels = _labels([9, 6, 4, 2])  # 21 samples: padded to 22 over 2 ranks
    n = len(labels)

    def make(rank, world):
        if kind == "stream":
            return _stream(labels, batch_size=4, rank=rank, world=world)
        images = torch.arange(1, n + 1, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
        return GLMCBatchSource(images, labels, 4, torch.zeros(1), torch.ones(1) / 255, pad=0, flip=False, seed=5,
                               rank=rank, world=world)

    def indices(src):
        got = []
        for (a1, _, _), (b1, _, _) in _with_epoch(src, 3):
            if kind == "stream":
                got.append((_index(a1), _index(b1)))
            else:
                got.append(((a1[:, 0, 0, 0] - 1).round().long(), (b1[:, 0, 0, 0] - 1).round().long()))
        return torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])

    a0, b0 = indices(make(0, 2))
    a1, b1 = indices(make(1, 2))
    assert len(make(0, 2)) == len(make(1, 2)) == 3 and len(a0) == len(a1) == 11
    assert set(a0.tolist()) | set(a1.tolist()) == set(range(n))  # together the ranks cover the data
    assert len(set(a0.tolist()) & set(a1.tolist())) <= 1  # only the padding repeats
    full_a, full_b = indices(make(0, 1))
    # interleaving the ranks' slices gives back the single-process global orders
    assert torch.equal(torch.stack([a0, a1], 1).flatten()[:n], full_a)
    assert torch.equal(torch.stack([b0, b1], 1).flatten()[:n], full_b)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("rho", ["0", "0.05"])
def test_glmc_trains_on_list_files(tmp_path: Path, rho: str) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    out = tmp_path / "run"
    args = ["train", "--method", "glmc", "--dataset", "imagenet_lt", "--data-root", str(root), "--image-size", "16",
            "--arch", "resnext50_32x4d", "--epochs", "2", "--batch-size", "8", "--rho", rho, "--workers", "0",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["method"], cfg["lr_schedule"], cfg["arch"]) == ("glmc", "glmc", "resnext50_32x4d")
    assert (cfg["batch_size"], cfg["lr"], cfg["wd"]) == (8, 0.01, 5e-3)
    final = json.loads((out / "final.json").read_text())
    assert final["cls_num_list"] == [12, 6, 6, 3] and final["epochs_done"] == 2
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.01, 0.001])  # GLMC's schedule: full LR at epoch 0, then the ramp from 0.1x
    ckpt = torch.load(out / "last.pt", weights_only=True)
    keys = set(ckpt["model"])
    assert {"fc.weight", "fc_cb.weight", "projection_head.weight", "contrast_head.weight"} <= keys
    assert ckpt["model"]["projection_head.weight"].shape == (256, 2048)  # ResNeXt-50: 2048 -> 256 (the reference's)
    assert not any(k.startswith("backbone.net.fc.") for k in keys)  # the backbone's own classifier is dropped
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--which", "last", "--json", str(report)]) == 0
    assert abs(json.loads(report.read_text())["top1"] - final["final"]["top1"]) < 1e-9


@pytest.mark.parametrize("dataset", ["imagenet_lt", "inat18"])
def test_glmc_defaults_on_the_large_sets(dataset: str) -> None:
    from ltsam.config import resolve

    cfg = resolve({"method": "glmc", "dataset": dataset})
    assert (cfg.arch, cfg.lr_schedule, cfg.batch_size, cfg.lr, cfg.wd, cfg.momentum) == (
        "resnext50_32x4d", "glmc", 64, 0.01, 5e-3, 0.9)
    assert cfg.workers == 4 and cfg.epochs == 90
