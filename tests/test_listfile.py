"""List-file data sets (ImageNet-LT / iNaturalist layout) on generated JPEGs: parsing, label
re-mapping by frequency, clear errors, and an end-to-end epoch through the streaming loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ltsam.cli import main
from ltsam.data import build_lt_data
from ltsam.errors import UserError

# Original label ids with these training counts: label 2 is the most frequent, 0 and 3 tie.
TRAIN_COUNTS = {0: 6, 1: 3, 2: 12, 3: 6}


def make_list_dataset(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for split, counts in (("train", TRAIN_COUNTS), ("test", {c: 2 for c in TRAIN_COUNTS})):
        for label, n in counts.items():
            d = root / split / f"n{label:04d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (20 + 3 * i, 18 + 2 * label)  # various sizes: resizing is the loader's job
                img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg", quality=80)
                lines[split].append(f"{split}/n{label:04d}/{i}.jpg {label}")
    (root / "ImageNet_LT_train.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "ImageNet_LT_test.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


def test_labels_are_remapped_by_descending_count_with_stable_ties(tmp_path: Path) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    data = build_lt_data("imagenet_lt", root, image_size=16)
    assert data.cls_num_list == [12, 6, 6, 3]
    # new 0 = old 2 (12 images); old 0 and old 3 tie at 6 and keep ascending id order; old 1 last.
    assert data.classes == ["2", "0", "3", "1"]
    assert data.train_labels.bincount().tolist() == [12, 6, 6, 3]
    x, y = next(iter(data.test_batches(8, "cpu")))
    assert x.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize("content, words", [
    ("train/n0000/0.jpg\n", ["ImageNet_LT_train.txt:1", "<relative image path> <integer label>"]),
    ("train/n0000/0.jpg zero\n", ["integer label"]),
    ("train/n0000/missing.jpg 0\n", ["missing.jpg", "does not exist"]),
    ("train/n0000/0.jpg -1\n", ["negative"]),
])
def test_malformed_list_lines_and_missing_images(tmp_path: Path, content: str, words: list[str]) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    (root / "ImageNet_LT_train.txt").write_text(content)
    with pytest.raises(UserError) as err:
        build_lt_data("imagenet_lt", root, image_size=16)
    for w in words:
        assert w in str(err.value)


def test_test_label_out_of_range(tmp_path: Path) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    with open(root / "ImageNet_LT_test.txt", "a") as f:
        f.write("test/n0000/0.jpg 7\n")
    with pytest.raises(UserError, match="label 7 is out of range"):
        build_lt_data("imagenet_lt", root, image_size=16)


def test_end_to_end_epoch_on_list_files(tmp_path: Path) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    out = tmp_path / "run"
    args = ["train", "--dataset", "imagenet_lt", "--data-root", str(root), "--image-size", "16",
            "--arch", "resnet10", "--epochs", "1", "--batch-size", "8", "--loss", "ldam", "--train-rule", "drw",
            "--rho", "0.1", "--workers", "0", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["cls_num_list"] == [12, 6, 6, 3] and final["test_images"] == 8
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["arch"], cfg["lr_schedule"], cfg["batch_size"]) == ("resnet10", "cosine", 8)


def test_train_transform_pipeline_matches_reference_ops() -> None:
    from torchvision import transforms as T

    from ltsam.data.streaming import test_transform, train_transform

    ops = [type(t) for t in train_transform(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).transforms]
    assert ops == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, T.ToTensor, T.Normalize]
    jitter = train_transform(224, (0, 0, 0), (1, 1, 1)).transforms[2]
    assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4) and jitter.hue is None
    t = test_transform(224, (0, 0, 0), (1, 1, 1)).transforms
    assert t[0].size == 256 and t[1].size == (224, 224)
