"""End-to-end training through the CLI: digits, a generated image folder, resume, eval."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ltsam.cli import main
from tests.conftest import FAST_DIGITS


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_digits_end_to_end_writes_run_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--out", str(out)]) == 0
    for name in ("config.json", "metrics.jsonl", "final.json", "last.pt", "best.pt",
                 "per_class_accuracy.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for key in ("lr", "rho", "train_loss", "train_acc", "test_top1", "test_top5", "many_acc",
                "medium_acc", "few_acc", "per_class_acc", "seconds"):
        assert key in lines[0]
    final = json.loads((out / "final.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    # The default is the paper's method on the digits.
    assert (cfg["loss"], cfg["train_rule"], cfg["optimizer"]) == ("ldam", "drw", "sam")
    assert final["cls_num_list"] == sorted(final["cls_num_list"], reverse=True)
    # Learning happened: above the 24% a majority-class guess gets on this training set.
    assert lines[-1]["train_acc"] > 30.0
    assert 0.0 <= final["final"]["top1"] <= 100.0
    text = capsys.readouterr().out
    assert "many-shot" in text and "overall top-1" in text


def test_folder_dataset_end_to_end(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--data-root", str(image_folder), "--arch", "resnet20",
            "--imb-factor", "0.25", "--epochs", "2", "--batch-size", "16", "--loss", "vs",
            "--train-rule", "resample", "--optimizer", "sgd", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    final = json.loads((out / "final.json").read_text())
    # exp profile with n_max 40 and f 0.25 over 4 classes: int(40 * 0.25 ** (c/3)).
    assert final["cls_num_list"] == [int(40 * 0.25 ** (c / 3)) for c in range(4)]
    assert final["classes"] == ["class_00", "class_01", "class_02", "class_03"]
    assert final["test_images"] == 24


def test_resume_is_bitwise_identical(tmp_path: Path) -> None:
    flags = [*FAST_DIGITS[:2], "--epochs", "3", "--batch-size", "64", "--no-progress", "--seed", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *flags, "--out", str(a)]) == 0
    assert main(["train", *flags, "--out", str(b), "--stop-after", "2"]) == 0
    assert torch.load(b / "last.pt", weights_only=True)["epoch"] == 2
    assert main(["train", "--resume", str(b), "--no-progress"]) == 0
    wa, wb = _weights(a / "last.pt"), _weights(b / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_top1"] for r in ma] == [r["test_top1"] for r in mb]


def test_eval_recomputes_saved_results(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--optimizer", "sgd", "--out", str(out)]) == 0
    final = json.loads((out / "final.json").read_text())
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--which", "last", "--json", str(report)]) == 0
    again = json.loads(report.read_text())
    assert abs(again["top1"] - final["final"]["top1"]) < 1e-9
    assert again["per_class_acc"] == final["final"]["per_class_acc"]


def test_recipes_cover_every_cifar_line_of_run_sh(capsys) -> None:
    from ltsam.recipes import RECIPES

    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    expected = {("cifar10", "ce", "none", None), ("cifar10", "ce", "drw", None),
                ("cifar10", "ldam", "drw", None), ("cifar10", "ce", "none", 0.1),
                ("cifar10", "ce", "drw", 0.5), ("cifar10", "ldam", "drw", 0.8),
                ("cifar100", "ce", "none", None), ("cifar100", "ce", "drw", None),
                ("cifar100", "ldam", "drw", None), ("cifar100", "ce", "none", 0.2),
                ("cifar100", "ce", "drw", 0.8), ("cifar100", "ldam", "drw", 0.8)}
    got = {(r["dataset"], r["loss"], r["train_rule"], r["rho"] if r["optimizer"] == "sam" else None)
           for name, r in RECIPES.items() if name.startswith("cifar")}  # the reference's run.sh lines
    assert got == expected
    for name in RECIPES:
        assert name in listed


def test_every_recipe_resolves() -> None:
    """Each named recipe resolves to a configuration with the recipe's own values (a GLMC recipe's
    glmc_resnet34, which is no MODELS entry, once failed here); a pretrained one needs the extra."""
    import importlib.util

    from ltsam.config import resolve
    from ltsam.recipes import RECIPES, get_recipe

    for name, recipe in RECIPES.items():
        if str(recipe["arch"]).startswith(("timm:", "clip:")) and importlib.util.find_spec("open_clip") is None:
            continue
        cfg = resolve({}, get_recipe(name))
        assert (cfg.recipe, cfg.arch, cfg.dataset, cfg.epochs) == (name, recipe["arch"], recipe["dataset"],
                                                                   recipe["epochs"]), name


def test_reference_flag_spellings_are_accepted(tmp_path: Path) -> None:
    """A run.sh line with `python cifar_train_sam.py` replaced by `ltsam train` parses the same."""
    from ltsam.cli import build_parser
    from ltsam.config import resolve
    from ltsam.train_flags import train_overrides

    args = build_parser().parse_args(
        ["train", "--loss_type", "LDAM", "--train_rule", "DRW", "--imb_type", "exp", "--imb_factor",
         "0.01", "--rho", "0.8", "--rho_schedule", "none", "--dataset", "cifar10", "--seed", "0",
         "--gpu", "0", "--log_results", "-a", "resnet32", "-b", "128", "--wd", "2e-4"])
    cfg = resolve(train_overrides(args))
    assert (cfg.loss, cfg.train_rule, cfg.imb_type, cfg.imb_factor, cfg.rho) == ("ldam", "drw", "exp", 0.01, 0.8)
    assert (cfg.dataset, cfg.arch, cfg.batch_size, cfg.wd, cfg.optimizer) == ("cifar10", "resnet32", 128, 2e-4, "sam")
    assert cfg.epochs == 200 and cfg.lr == 0.1


def test_cifar_pickles_are_read(tmp_path: Path, monkeypatch) -> None:
    """The official python-pickle layout, generated tiny, is read and LT-subsampled."""
    import pickle

    import numpy as np

    from ltsam.data import build_lt_data

    root = tmp_path / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": [i % 10 for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(100), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(50), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    # Generated files have no official MD5; the real ones are checked by torchvision.
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    data = build_lt_data("cifar10", root, "exp", 0.1)
    assert data.cls_num_list == [int(50 * 0.1 ** (c / 9)) for c in range(10)]
    assert data.train.images.shape[1:] == (3, 32, 32) and len(data.test) == 50
