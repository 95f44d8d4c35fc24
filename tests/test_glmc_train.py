"""GLMC as a method of `ltsam train`: end to end with SGD and SAM, resume, eval, schedule, selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ltsam.cli import main


@pytest.mark.parametrize("rho", ["0", "0.05"])
def test_glmc_end_to_end_on_generated_folder(tmp_path: Path, image_folder: Path, rho: str) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", "glmc", "--dataset", "folder", "--data-root", str(image_folder), "--arch",
            "resnet20", "--imb-factor", "0.5", "--epochs", "2", "--batch-size", "16", "--rho", rho,
            "--contrast-weight", "1.5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "glmc" and cfg["contrast_weight"] == 1.5
    assert cfg["optimizer"] == ("sgd" if rho == "0" else "sam")
    final = json.loads((out / "final.json").read_text())
    assert set(final["final"]["shot_acc"]) == {"many", "medium", "few"}
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["model_meta"]["method"] == "glmc"
    assert any(k.startswith("fc_cb.") for k in ckpt["model"])
    # eval rebuilds the GLMC model and predicts with the re-balanced head
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--which", "last", "--json", str(report)]) == 0
    assert abs(json.loads(report.read_text())["top1"] - final["final"]["top1"]) < 1e-9


def test_glmc_resume_is_bitwise_identical(tmp_path: Path) -> None:
    flags = ["--method", "glmc", "--epochs", "3", "--batch-size", "64", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *flags, "--out", str(a)]) == 0
    assert main(["train", *flags, "--out", str(b), "--stop-after", "1"]) == 0
    assert main(["train", "--resume", str(b), "--no-progress"]) == 0
    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_glmc_lr_schedule_values() -> None:
    from ltsam.glmc.schedule import glmc_lr

    base, epochs = 0.1, 100
    assert glmc_lr(0, base, epochs) == base  # epoch 0 at full LR (set before any epoch ran)
    for k in range(1, 12):  # after epoch e = k - 1 <= 10: base (e + 1) / 10
        assert math.isclose(glmc_lr(k, base, epochs), base * k / 10)
    assert math.isclose(glmc_lr(11, base, epochs), 1.1 * base)
    e = 50
    assert math.isclose(glmc_lr(e + 1, base, epochs), base * 0.5 * (1 + math.cos(math.pi * (e - 9) / 91)))


def test_glmc_selection_matches_np_random_choice_with_global_seed() -> None:
    from ltsam.data.profiles import lt_indices_glmc

    rng = np.random.default_rng(5)
    targets = rng.permutation(np.repeat(np.arange(5), 40))
    counts = [40, 20, 10, 5, 2]
    np.random.seed(3407)
    expected = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        expected.extend(idx[np.random.choice(len(idx), n, replace=False)].tolist())
    assert lt_indices_glmc(targets, counts, 3407).tolist() == expected


def test_glmc_recipes_follow_run_sh() -> None:
    from ltsam.recipes import RECIPES

    r = RECIPES["glmc-sam-cifar10-lt-if50"]
    assert (r["method"], r["dataset"], r["imb_factor"], r["contrast_weight"], r["rho"], r["optimizer"]) == (
        "glmc", "cifar10", 0.02, 1.0, 0.05, "sam")
    assert (r["batch_size"], r["lr"], r["wd"]) == (64, 0.01, 5e-3)
    assert (r["label_weighting"], r["resample_weighting"]) == (1.2, 0.0)
    assert RECIPES["glmc-cifar100-lt-if100"]["optimizer"] == "sgd"
    assert RECIPES["glmc-cifar100-lt-if100"]["imb_factor"] == 0.01
