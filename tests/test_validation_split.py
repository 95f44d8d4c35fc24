"""The validation split (--val-per-class / --val-fraction): where its images come from, that they never
meet the training images, that CIFAR's long-tailed training set stays the reference's, and that runs with
it record the best-validation epoch (also with GLMC and under torchrun)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ltsam.cli import main
from ltsam.data import build_lt_data, lt_counts, lt_indices
from ltsam.data.validation import draw_validation
from ltsam.errors import UserError
from tests.conftest import FAST_DIGITS, make_image_folder
from tests.test_listfile import TRAIN_COUNTS, make_list_dataset

PER_CLASS = 100  # images per class of the generated CIFAR-10 training pickles


def make_cifar10(root: Path, monkeypatch) -> np.ndarray:
    """Tiny CIFAR-10 pickles whose every image carries its own training-set index in its first 4 bytes
    (so a loaded image says which source image it is); returns the training labels in file order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), PER_CLASS))  # file order mixes the classes, as CIFAR's

    def batch(index: np.ndarray, y: np.ndarray) -> dict:
        data = rng.integers(0, 256, (len(index), 3072), dtype=np.uint8)
        data[:, :4] = index.astype("<u4").view(np.uint8).reshape(-1, 4)
        return {"data": data, "labels": y.tolist()}

    idx = np.arange(len(labels))
    for i in range(5):
        part = slice(i * len(labels) // 5, (i + 1) * len(labels) // 5)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(batch(idx[part], labels[part]), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(np.arange(50), np.arange(50) % 10), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    # Generated files have no official MD5; the real ones are checked by torchvision.
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    return labels


def source_index(images: torch.Tensor) -> np.ndarray:
    """The training-set index each generated image carries: a pickle row is channel-planar (1024 red bytes
    first), so its first 4 bytes are the red values of pixels (0, 0) .. (0, 3)."""
    first = np.ascontiguousarray(images[:, 0, 0, :4].numpy())
    return first.view("<u4").ravel().astype(np.int64)


@pytest.mark.parametrize("imb_type, per_class", [("exp", 30), ("step", 7)])
def test_cifar_training_set_is_the_reference_lt_set_and_validation_comes_from_the_rest(
        tmp_path: Path, monkeypatch, imb_type: str, per_class: int) -> None:
    labels = make_cifar10(tmp_path / "cifar", monkeypatch)
    counts = lt_counts(PER_CLASS, 10, imb_type, 0.1)
    reference = lt_indices(labels, counts, rand_number=0)  # the reference's procedure, indices in its order
    plain = build_lt_data("cifar10", tmp_path / "cifar", imb_type, 0.1)
    data = build_lt_data("cifar10", tmp_path / "cifar", imb_type, 0.1, val_per_class=per_class)
    # The LT training set: the reference's images, in the reference's order, with or without the split.
    assert source_index(data.train.images).tolist() == reference.tolist()
    assert torch.equal(data.train.images, plain.train.images) and torch.equal(data.train.targets, plain.train.targets)
    assert data.cls_num_list == counts
    val = source_index(data.val.images)
    assert not set(val) & set(reference.tolist())  # never a training image
    assert np.array_equal(labels[val], data.val.targets.numpy())
    # min(N, images the profile left out) per class: the head class(es) kept whole give none.
    assert data.val_cls_num_list == [min(per_class, PER_CLASS - n) for n in counts]
    assert data.val_cls_num_list[0] == 0 and sum(data.val_cls_num_list) == len(val) == data.val_size
    assert "fewer for" in data.val_note and "training set unchanged" in data.val_note


def test_cifar_validation_split_is_seeded_by_rand_number(tmp_path: Path, monkeypatch) -> None:
    make_cifar10(tmp_path / "cifar", monkeypatch)

    def val(rand_number: int, seed: int) -> list[int]:
        d = build_lt_data("cifar10", tmp_path / "cifar", "exp", 0.1, rand_number=rand_number, seed=seed,
                          val_per_class=20)
        return source_index(d.val.images).tolist()

    assert val(0, 0) == val(0, 5)  # every training seed of a sweep sees the same split
    assert val(0, 0) != val(1, 0)


def test_val_fraction_is_of_the_smallest_source_class(tmp_path: Path, monkeypatch) -> None:
    make_cifar10(tmp_path / "cifar", monkeypatch)
    data = build_lt_data("cifar10", tmp_path / "cifar", "exp", 0.1, val_fraction=0.15)
    # floor(0.15 * 100) = 15 per class, fewer where the profile leaves fewer out.
    assert data.val_cls_num_list == [min(15, PER_CLASS - n) for n in lt_counts(PER_CLASS, 10, "exp", 0.1)]
    with pytest.raises(UserError, match="give one of --val-per-class, --val-fraction:"):
        build_lt_data("cifar10", tmp_path / "cifar", val_per_class=3, val_fraction=0.1)
    with pytest.raises(UserError, match="holds out no image"):
        build_lt_data("cifar10", tmp_path / "cifar", val_fraction=0.001)


def _digests(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images]


def test_folder_validation_is_held_out_of_the_training_images_before_the_profile(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", [40, 30, 20, 3], [4, 4, 4, 4])
    data = build_lt_data("folder", root, "exp", 0.25, val_per_class=5)
    everything = build_lt_data("folder", root, "none", 1.0)  # every training image, decoded the same way
    train, val, source = _digests(data.train.images), _digests(data.val.images), _digests(everything.train.images)
    assert len(set(source)) == len(source) == 93  # the generated noise makes every image unique
    assert not set(train) & set(val)
    assert set(train) | set(val) <= set(source)
    assert data.val_cls_num_list == [5, 5, 5, 2]  # min(N, n_c - 1): one image of class 3 stays for training
    # The profile is drawn from what is left: n_max = 40 - 5 = 35, capped at what a class has.
    left = [35, 25, 15, 1]
    assert data.cls_num_list == [min(n, a) for n, a in zip(lt_counts(35, 4, "exp", 0.25), left)]
    assert "before the long-tail profile" in data.val_note


def test_list_file_validation_keeps_the_label_order(tmp_path: Path) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    plain = build_lt_data("imagenet_lt", root, image_size=16)
    data = build_lt_data("imagenet_lt", root, image_size=16, val_per_class=2)
    assert data.classes == plain.classes  # labels ordered by the full list's counts
    assert not set(data.train_paths) & set(data.val_paths)
    assert sorted(map(str, data.train_paths + data.val_paths)) == sorted(map(str, plain.train_paths))
    by_new = [TRAIN_COUNTS[int(c)] for c in data.classes]
    assert data.val_cls_num_list == [min(2, n - 1) for n in by_new]
    assert data.cls_num_list == [n - min(2, n - 1) for n in by_new]
    x, y = next(iter(data.val_batches(64, "cpu")))
    assert len(y) == data.val_size and x.shape[1:] == (3, 16, 16)


def test_draw_validation_takes_min_n_of_each_class_pool() -> None:
    targets = np.array([0] * 5 + [1] * 2 + [2] * 9)
    candidates = np.array([0, 1, 2, 5, 6, 7, 8])  # class 0: 3 candidates, class 1: 2, class 2: 2
    picked = draw_validation(targets, candidates, 3, 2, seed=0)
    assert set(picked) <= set(candidates)
    assert np.bincount(targets[picked], minlength=3).tolist() == [2, 2, 2]
    kept_one = draw_validation(targets, candidates, 3, 5, seed=0, keep_one=True)
    assert np.bincount(targets[kept_one], minlength=3).tolist() == [2, 1, 1]


def test_training_with_a_validation_split_is_the_same_run_and_records_the_best_val_epoch(tmp_path: Path) -> None:
    flags = [*FAST_DIGITS[:2], "--epochs", "3", "--batch-size", "64", "--no-progress", "--seed", "1"]
    a, b = tmp_path / "plain", tmp_path / "val"
    assert main(["train", *flags, "--out", str(a)]) == 0
    assert main(["train", *flags, "--val-per-class", "6", "--out", str(b)]) == 0
    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the split changes nothing the run trains on
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_top1"] for r in ra] == [r["test_top1"] for r in rb]
    assert all("val_top1" not in r for r in ra) and all(r["val_top1"] is not None for r in rb)
    final = json.loads((b / "final.json").read_text())
    best = max(rb, key=lambda r: (r["val_top1"], -r["epoch"]))  # the highest val top-1, the earliest on a tie
    bv = final["best_val"]
    assert (bv["epoch"], bv["val_top1"], bv["top1"]) == (best["epoch"], best["val_top1"], best["test_top1"])
    assert bv["shot_acc"] == {k: best[f"{k}_acc"] for k in ("many", "medium", "few")}
    assert final["final"]["top1"] == rb[-1]["test_top1"]  # last epoch
    assert final["best"]["selected_on"] == "test" and bv["selected_on"] == "validation"
    assert final["best"]["top1"] == max(r["test_top1"] for r in rb)
    assert final["val_images"] == sum(final["val_cls_num_list"]) and final["val_cls_num_list"][0] == 0
    assert json.loads((a / "final.json").read_text())["best_val"] is None
    # best_val.pt is the checkpoint of that epoch: ltsam eval on it gives the recorded test results
    assert torch.load(b / "best_val.pt", weights_only=True)["epoch"] == best["epoch"] + 1
    report = tmp_path / "best_val.json"
    assert main(["eval", str(b), "--which", "best_val", "--json", str(report)]) == 0
    again = json.loads(report.read_text())
    assert (again["top1"], again["per_class_acc"]) == (bv["top1"], bv["per_class_acc"])
    assert not (a / "best_val.pt").exists()


def test_best_val_of_a_run_without_a_split_is_one_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "plain"
    assert main(["train", *FAST_DIGITS[:2], "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--which", "best_val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no validation split" in err and "--val-per-class" in err, err


def test_glmc_with_a_validation_split_under_torchrun(tmp_path: Path) -> None:
    """Two gloo processes: each evaluates its shard of the validation images; the summed counts are the
    run's val top-1, which equals the two shards evaluated here with the saved model."""
    from ltsam.data.loading import load_data
    from ltsam.evaluate import evaluate
    from ltsam.runs import load_trained
    from tests.test_distributed import _torchrun

    out = tmp_path / "run"
    proc = _torchrun(["-m", "ltsam", "train", "--method", "glmc", "--epochs", "1", "--batch-size", "32",
                      "--val-per-class", "4", "--no-progress", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["best_val"]["epoch"] == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    model, cfg, _ = load_trained(out, "last")
    data = load_data(cfg)
    correct = 0
    for rank in (0, 1):
        result, conf = evaluate(model, data.val_batches(cfg.eval_batch_size, torch.device("cpu"), rank=rank, world=2),
                                data.cls_num_list)
        correct += int(conf.diag().sum())
    assert final["val_images"] == data.val_size == 36
    assert record["val_top1"] == 100.0 * correct / data.val_size


def test_a_split_with_nothing_to_hold_out_is_refused(tmp_path: Path, capsys) -> None:
    # --imb-type none keeps every digits image: the profile leaves none out to validate on.
    code = main(["train", *FAST_DIGITS, "--imb-type", "none", "--val-per-class", "3", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "gave no validation images" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_a_val_list_validates_on_its_images_and_keeps_the_training_list_whole(tmp_path: Path) -> None:
    """--val-list (ImageNet-LT's val list): labels in the training list's order, the training set unchanged."""
    root = make_list_dataset(tmp_path / "imnet")
    # old labels 1 and 2 (new 3 and 0), the test images
    (root / "val.txt").write_text("test/n0001/0.jpg 1\ntest/n0002/0.jpg 2\ntest/n0002/1.jpg 2\n")
    plain = build_lt_data("imagenet_lt", root, image_size=16)
    data = build_lt_data("imagenet_lt", root, image_size=16, val_list=str(root / "val.txt"))
    assert (data.classes, data.cls_num_list, data.train_paths) == (plain.classes, plain.cls_num_list,
                                                                    plain.train_paths)
    assert data.val_labels.tolist() == [3, 0, 0] and data.val_cls_num_list == [2, 0, 0, 1]
    x, y = next(iter(data.val_batches(64, "cpu")))
    assert y.tolist() == [3, 0, 0] and x.shape[1:] == (3, 16, 16)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagenet_lt", "--data-root", str(root), "--image-size", "16", "--arch",
                 "resnet10", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress",
                 "--val-list", str(root / "val.txt"), "--out", str(run)]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["val_images"] == 3 and final["train_images"] == sum(plain.cls_num_list)
    assert final["best_val"]["epoch"] == 0 and (run / "best_val.pt").is_file()


@pytest.mark.parametrize("flags, words", [
    (["--dataset", "digits", "--val-list", "v.txt"], ["--val-list is for list-file data sets", "--val-per-class"]),
    (["--dataset", "digits", "--val-list", "v.txt", "--val-per-class", "2"], ["give one of", "--val-list"]),
])
def test_val_list_misuse_is_one_line(tmp_path: Path, capsys, flags: list[str], words: list[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "1", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not out.exists()
