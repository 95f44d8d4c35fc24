"""`ltsam hessian` and `ltsam hessian-compare` on short digits runs: outputs, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltsam.cli import main
from tests.conftest import FAST_DIGITS

QUICK = ["--max-per-class", "12", "--slq-steps", "12", "--trace-iters", "6", "--power-iters", "12",
         "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "sgd", root / "sam"
    assert main(["train", *FAST_DIGITS, "--optimizer", "sgd", "--out", str(a)]) == 0
    assert main(["train", *FAST_DIGITS, "--rho", "0.5", "--out", str(b)]) == 0
    return a, b


def test_hessian_writes_summary_and_figures(two_runs, capsys) -> None:
    run = two_runs[0]
    assert main(["hessian", str(run), "--classes", "0,9", *QUICK]) == 0
    out = run / "hessian" / "train"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["order"] == ["0", "9", "all"]
    for key in ("0", "9", "all"):
        entry = summary["entries"][key]
        for field in ("count", "loss", "accuracy", "lambda_dominant", "trace", "esd_lambda_min", "esd_lambda_max",
                      "ratio", "nodes", "weights"):
            assert field in entry, (key, field)
        assert "lambda_max" not in entry
        # the dominant eigenvalue (largest magnitude) is one of the two algebraic extremes (fast method)
        assert entry["lambda_dominant"] in (entry["esd_lambda_min"], entry["esd_lambda_max"])
        assert abs(sum(entry["weights"][0]) - 1.0) < 1e-6
        assert entry["esd_lambda_min"] <= entry["esd_lambda_max"]
        assert entry["ratio"] == pytest.approx(entry["esd_lambda_min"] / entry["esd_lambda_max"])
    assert summary["entries"]["9"]["count"] == 12  # the tail class has 12 training images
    for name in ("esd_class_0.png", "esd_class_9.png", "esd_grid.png", "eigen_by_class.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "λmin/λmax" in printed and "λdom" in printed and "largest |λ|" in printed
    # A second call with the same settings keeps the finished classes (no recomputation).
    before = (out / "summary.json").read_text()
    assert main(["hessian", str(run), "--classes", "0,9", *QUICK]) == 0
    assert json.loads((out / "summary.json").read_text())["entries"] == json.loads(before)["entries"]


def test_hessian_compare(two_runs, capsys) -> None:
    a, b = two_runs
    for run in (a, b):
        assert main(["hessian", str(run), "--classes", "0,9", *QUICK]) == 0
    capsys.readouterr()
    fig = a.parent / "compare.png"
    assert main(["hessian-compare", str(a), str(b), "--labels", "SGD", "SAM", "--out", str(fig)]) == 0
    assert fig.stat().st_size > 0
    assert "SGD (a) vs SAM (b)" in capsys.readouterr().out
    # A summary written before lambda_max was renamed lambda_dominant (format 1) still compares.
    path = a / "hessian" / "train" / "summary.json"
    summary = json.loads(path.read_text())
    old_names = {"lambda_dominant": "lambda_max", "lambda_dominant_source": "lambda_max_source",
                 "lambda_dominant_iterations": "lambda_max_iterations", "lambda_dominant_converged":
                 "lambda_max_converged", "lambda_dominant_residual": "lambda_max_residual"}
    summary["format"] = "ltsam.hessian.summary/1"
    summary["entries"] = {k: {old_names.get(q, q): v for q, v in e.items()} for k, e in summary["entries"].items()}
    path.write_text(json.dumps(summary))
    assert main(["hessian-compare", str(a), str(b), "--labels", "SGD", "SAM", "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    value = f"{summary['entries']['0']['lambda_max']:.4g}"
    assert "λdom a" in out and value in out


def test_hessian_errors(two_runs, tmp_path: Path, capsys) -> None:
    assert main(["hessian", str(two_runs[0]), "--classes", "42", *QUICK]) == 2
    assert "--classes" in capsys.readouterr().err
    assert main(["hessian-compare", str(two_runs[0]), str(tmp_path)]) == 2
    assert "ltsam hessian" in capsys.readouterr().err


def test_hessian_on_a_list_file_run_decodes_only_the_chosen_images(tmp_path: Path) -> None:
    """A GLMC run on list files (ImageNet-LT layout): the analysed inputs are the first N test-transformed
    images of each chosen class, and the summary holds only those classes (no whole-data entry)."""
    import torch
    from PIL import Image

    from ltsam.data import build_lt_data
    from ltsam.data.streaming import test_transform
    from ltsam.hessian.inputs import hessian_inputs
    from tests.test_listfile import make_list_dataset

    root = make_list_dataset(tmp_path / "imnet")
    run = tmp_path / "run"
    assert main(["train", "--method", "glmc", "--dataset", "imagenet_lt", "--data-root", str(root), "--image-size",
                 "16", "--arch", "resnet10", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                 "--out", str(run), "--no-progress"]) == 0
    data = build_lt_data("imagenet_lt", root, image_size=16)
    x, y = hessian_inputs(data, "train", False, 0, 2, [1, 3])
    assert y.tolist() == [1, 1, 3, 3]
    first = int(torch.where(data.train_labels == 3)[0][0])
    with Image.open(data.train_paths[first]) as im:
        expected = test_transform(16, data.mean, data.std)(im.convert("RGB"))
    torch.testing.assert_close(x[2], expected)
    # --augment: one seeded draw of the training augmentation, the same for the same seed
    a1, _ = hessian_inputs(data, "train", True, 5, 2, [1, 3])
    a2, _ = hessian_inputs(data, "train", True, 5, 2, [1, 3])
    a3, _ = hessian_inputs(data, "train", True, 6, 2, [1, 3])
    assert torch.equal(a1, a2) and not torch.equal(a1, a3) and not torch.equal(a1, x)
    assert main(["hessian", str(run), "--classes", "1,3", "--max-per-class", "2", "--slq-steps", "4",
                 "--trace-iters", "3", "--power-iters", "4", "--no-progress"]) == 0
    summary = json.loads((run / "hessian" / "train" / "summary.json").read_text())
    assert summary["order"] == ["1", "3"]
    assert [summary["entries"][k]["count"] for k in ("1", "3")] == [2, 2]
    # all classes: every class (default 20 per class covers these small ones) and the whole-data entry
    assert main(["hessian", str(run), "--slq-steps", "4", "--trace-iters", "3", "--power-iters", "4",
                 "--out", str(tmp_path / "h_all"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "h_all" / "summary.json").read_text())
    assert summary["order"] == ["0", "1", "2", "3", "all"]
    assert summary["entries"]["all"]["count"] == 27


def test_the_hessian_loss_is_weighted_as_the_train_rule_weights_its_last_phase() -> None:
    """Every registered rule is a --train-rule choice; DRW's last phase and reweight give the effective-number
    weights (1 - beta) / (1 - beta^n_c), rescaled to sum to C, worked out here; none and resample none."""
    import torch

    from ltsam.hessian.inputs import hessian_loss
    from ltsam.rules import TRAIN_RULES

    counts = [100, 10, 1]
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    want = torch.tensor([w / sum(raw) * 3 for w in raw], dtype=torch.float32)
    for rule in TRAIN_RULES.names():
        weight = hessian_loss("ce", rule, counts).weight
        if rule in ("drw", "reweight"):
            torch.testing.assert_close(weight, want, rtol=4 * torch.finfo(torch.float32).eps, atol=0)
        elif rule in ("none", "resample"):
            assert weight is None, rule
