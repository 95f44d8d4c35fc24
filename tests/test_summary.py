"""`ltsam report` on hand-made run folders: grouping by configuration without the seed, mean ± sample std
against numbers worked out by hand, the paper's figure beside a recipe (marked where the runs differ from
it), unfinished runs left out or (--partial) included, and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ltsam.cli import main
from ltsam.config import resolve
from ltsam.recipes import get_recipe

CLS = [50, 30, 15]  # class sizes of the made-up runs: many/medium/few split (>100 / 20-100 / <20) -> -, 2, 1


def make_run(path: Path, recipe: str, seed: int, tops: list[float], finished: bool = True,
             epochs: int = 2) -> None:
    """A run folder as `ltsam train` leaves it, with test top-1 ``tops[e]`` after epoch e."""
    cfg = resolve({"seed": seed, "epochs": epochs}, get_recipe(recipe))
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    rows = [{"epoch": e, "test_top1": t, "many_acc": None, "medium_acc": t + 1.0, "few_acc": t - 1.0,
             "per_class_acc": [t, t + 1.0, t - 1.0], "test_top5": 100.0} for e, t in enumerate(tops)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        best = max(rows, key=lambda r: r["test_top1"])
        final = {"epochs_done": len(rows), "epochs": epochs, "cls_num_list": CLS,
                 "final": {"top1": tops[-1], "top5": 100.0, "per_class_acc": rows[-1]["per_class_acc"],
                           "shot_acc": {"many": None, "medium": tops[-1] + 1.0, "few": tops[-1] - 1.0}},
                 "best": {"epoch": best["epoch"], "top1": best["test_top1"], "per_class_acc": best["per_class_acc"],
                          "shot_acc": {"many": None, "medium": best["medium_acc"], "few": best["few_acc"]}},
                 "best_val": None}
        (path / "final.json").write_text(json.dumps(final))


def _runs(root: Path) -> Path:
    for seed, last in enumerate([50.0, 52.0, 57.0]):
        make_run(root / f"ldam_seed{seed}", "cifar10-lt-ldam-drw-sam", seed, [45.0, last])
    for seed, last in enumerate([40.0, 43.0]):
        make_run(root / f"ce_seed{seed}", "cifar10-lt-ce", seed, [44.0, last])
    make_run(root / "ce_seed2", "cifar10-lt-ce", 2, [46.0], finished=False)
    return root


def test_report_groups_seeds_and_gives_mean_and_sample_std(tmp_path: Path, capsys) -> None:
    root = _runs(tmp_path / "runs")
    assert main(["report", str(root), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    text = capsys.readouterr().out
    # ldam: mean 53, s = sqrt((9 + 1 + 16) / 2) = sqrt(13) = 3.6056; best test = the same (epoch 2 > epoch 1).
    # ce: mean 41.5, s = sqrt((2.25 + 2.25) / 1) = 2.1213; best test: max(44, 40) = 44 and max(44, 43) = 44.
    assert "| ldam | 3 | 53.00 ± 3.61 | – | 54.00 ± 3.61 | 52.00 ± 3.61 | 53.00 ± 3.61 | 81.90 ‡ |" in text
    assert "| ce | 2 | 41.50 ± 2.12 | – | 42.50 ± 2.12 | 40.50 ± 2.12 | 44.00 ± 0.00 | – |" in text
    assert "‡ ldam" in text and "epochs 2 (recipe: 200)" in text
    assert "No validation split" in text and "best-val" not in text.splitlines()[0]
    assert "Left out: 1 unfinished run(s) (ce_seed2)" in text
    with open(tmp_path / "rep" / "report.csv") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert rows["ldam"]["seeds"] == "0 1 2" and float(rows["ldam"]["paper_top1"]) == 81.9
    assert abs(float(rows["ldam"]["last_top1_std"]) - 13 ** 0.5) < 1e-12
    assert rows["ce"]["best_val_top1_mean"] == "" and rows["ce"]["paper_top1"] == ""


def test_partial_includes_the_last_finished_epoch_of_unfinished_runs(tmp_path: Path, capsys) -> None:
    root = _runs(tmp_path / "runs")
    assert main(["report", str(root / "ce_seed0"), str(root / "ce_seed1"), str(root / "ce_seed2"),
                 "--out", str(tmp_path / "rep"), "--partial", "--no-figures"]) == 0
    text = capsys.readouterr().out
    # (40 + 43 + 46) / 3 = 43, s = sqrt((9 + 0 + 9) / 2) = 3
    assert "| ce | 3 | 43.00 ± 3.00 |" in text and "unfinished runs (--partial)" in text


def test_one_run_has_no_spread(tmp_path: Path, capsys) -> None:
    root = _runs(tmp_path / "runs")
    assert main(["report", str(root / "ldam_seed2"), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    assert "| ldam | 1 | 57.00 | – | 58.00 | 56.00 | 57.00 | 81.90 ‡ |" in capsys.readouterr().out


def test_report_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run folders" in capsys.readouterr().err
    make_run(tmp_path / "r" / "a_seed0", "cifar10-lt-ce", 0, [40.0], finished=False)
    assert main(["report", str(tmp_path / "r")]) == 2
    assert "--partial" in capsys.readouterr().err
