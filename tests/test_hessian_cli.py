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
        for field in ("count", "loss", "accuracy", "lambda_max", "trace", "esd_lambda_min", "esd_lambda_max",
                      "ratio", "nodes", "weights"):
            assert field in entry, (key, field)
        assert abs(sum(entry["weights"][0]) - 1.0) < 1e-6
        assert entry["esd_lambda_min"] <= entry["esd_lambda_max"]
        assert entry["ratio"] == pytest.approx(entry["esd_lambda_min"] / entry["esd_lambda_max"])
    assert summary["entries"]["9"]["count"] == 12  # the tail class has 12 training images
    for name in ("esd_class_0.png", "esd_class_9.png", "esd_grid.png", "eigen_by_class.png"):
        assert (out / name).stat().st_size > 0
    assert "λmin/λmax" in capsys.readouterr().out
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


def test_hessian_errors(two_runs, tmp_path: Path, capsys) -> None:
    assert main(["hessian", str(two_runs[0]), "--classes", "42", *QUICK]) == 2
    assert "--classes" in capsys.readouterr().err
    assert main(["hessian-compare", str(two_runs[0]), str(tmp_path)]) == 2
    assert "ltsam hessian" in capsys.readouterr().err
