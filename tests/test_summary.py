"""`ltsam report` on hand-made run folders: grouping by configuration without the seed, mean ± sample std
against numbers worked out by hand, the paper's figure beside a recipe (marked where the runs differ from
it), unfinished runs left out or (--partial) included, and clear errors. Then what counts: a stopped run is
not finished, copies and runs of one configuration and seed count once, a folder without ltsam's marker
counts not, a null value is not averaged (k of n); damaged files give one line; stage runs on parents of
different seeds group; the report never writes into a folder it did not make."""

from __future__ import annotations

import csv
import json
import math
import secrets
import shutil
from pathlib import Path

import pytest

from ltsam.cli import main
from ltsam.config import resolve
from ltsam.recipes import get_recipe

CLS = [50, 30, 15]  # class sizes of the made-up runs: many/medium/few split (>100 / 20-100 / <20) -> -, 2, 1


def make_run(path: Path, recipe: str, seed: int, tops: list[float], finished: bool = True,
             epochs: int = 2, marker: str | None = "ltsam-run-v1\nid {id}\n") -> None:
    """A run folder as `ltsam train` leaves it, with test top-1 ``tops[e]`` after epoch e; its final.json
    records ``epochs_done = len(tops)`` of ``epochs`` (fewer: a --stop-after run). ``marker``: the
    .ltsam-run text ({id}: a fresh run id), None for a folder without one."""
    cfg = resolve({"seed": seed, "epochs": epochs}, get_recipe(recipe))
    path.mkdir(parents=True)
    if marker is not None:
        (path / ".ltsam-run").write_text(marker.format(id=secrets.token_hex(8)))
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


# ---------------------------------------------------------------- what counts (issue 19)
def _hand(xs: list[float]) -> str:
    """'mean ± s' as the table prints it, s = sqrt(sum (x - mean)^2 / (n - 1)) written out."""
    m = sum(xs) / len(xs)
    return f"{m:.2f} ± {math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)):.2f}"


def _report(capsys, *args: str) -> str:
    assert main(["report", *args, "--no-figures"]) == 0
    return capsys.readouterr().out


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["config"]: r for r in csv.DictReader(f)}


def test_a_stopped_run_is_not_finished(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    make_run(root / "ce_seed0", "cifar10-lt-ce", 0, [30.0, 40.0, 52.8], epochs=3)
    make_run(root / "ce_seed1", "cifar10-lt-ce", 1, [31.0, 45.0, 58.9], epochs=3)
    make_run(root / "ce_seed2", "cifar10-lt-ce", 2, [16.1], epochs=3)  # --stop-after 1: final.json, 1 of 3
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"))
    assert f"| ce | 2 | {_hand([52.8, 58.9])} |" in text  # 55.85 ± 4.31, not the three runs' 42.60 ± 22.86
    assert "Left out: 1 unfinished run(s) (ce_seed2); --partial includes them." in text
    assert "Includes unfinished" not in text
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"), "--partial")
    assert f"| ce | 3 | {_hand([52.8, 58.9, 16.1])} |" in text
    assert "* Includes unfinished runs (--partial): ce_seed2 (1 of 3 epochs);" in text


def test_a_copied_run_and_runs_of_one_seed_count_once(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    make_run(root / "ce_seed0", "cifar10-lt-ce", 0, [44.0, 40.0])
    make_run(root / "ce_seed1", "cifar10-lt-ce", 1, [44.0, 43.0])
    shutil.copytree(root / "ce_seed0", root / "backup" / "ce_seed0")  # the copy keeps the marker's run id
    shutil.copytree(root / "ce_seed1", root / "backup" / "ce_seed1")
    # old folders (a marker without a run id), and a run made again under another id: seed 0 of one config
    make_run(root / "ldam_seed0", "cifar10-lt-ldam-drw-sam", 0, [45.0, 50.0], marker="ltsam-run-v1\n")
    make_run(root / "ldam_seed0_again", "cifar10-lt-ldam-drw-sam", 0, [45.0, 70.0], marker="ltsam-run-v1\n")
    make_run(root / "ldam_seed1", "cifar10-lt-ldam-drw-sam", 1, [45.0, 52.0])
    make_run(root / "ldam_seed1_again", "cifar10-lt-ldam-drw-sam", 1, [45.0, 90.0])
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"))
    assert f"| ce | 2 | {_hand([40.0, 43.0])} |" in text  # 41.50 ± 2.12; four folders would give ± 1.73
    rows = _csv(tmp_path / "rep" / "report.csv")
    assert rows["ce"]["n"] == "2" and rows["ce"]["seeds"] == "0 1"
    assert abs(float(rows["ce"]["last_top1_std"]) - math.sqrt(4.5)) < 1e-12
    # the first seen of each pair counts (sorted folder names): ldam_seed0, ldam_seed1
    assert rows["ldam"]["n"] == "2" and float(rows["ldam"]["last_top1_mean"]) == 51.0
    warnings = [ln for ln in text.splitlines() if ln.startswith("Warning: counted once")]
    assert len(warnings) == 4
    assert any(f"{root / 'backup' / 'ce_seed0'}, {root / 'ce_seed0'} — copies of one run (run id " in w
               for w in warnings)
    assert any(f"{root / 'ldam_seed0'}, {root / 'ldam_seed0_again'} — the same configuration and seed" in w
               for w in warnings)
    assert any(f"{root / 'ldam_seed1'}, {root / 'ldam_seed1_again'} — the same configuration and seed" in w
               for w in warnings)


def test_a_folder_without_the_marker_is_left_out(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    make_run(root / "ce_seed0", "cifar10-lt-ce", 0, [44.0, 40.0])
    make_run(root / "ce_seed1", "cifar10-lt-ce", 1, [44.0, 43.0])
    make_run(root / "ce_seed2", "cifar10-lt-ce", 2, [44.0, 10.0], marker=None)  # config.json + final.json
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"))
    assert f"| ce | 2 | {_hand([40.0, 43.0])} |" in text
    assert "Left out: 1 folder(s), not an ltsam run folder: no .ltsam-run marker (ce_seed2)." in text
    assert main(["report", str(root / "ce_seed2"), "--out", str(tmp_path / "rep2")]) == 2
    assert "is an ltsam run folder (no .ltsam-run marker)" in capsys.readouterr().err


def test_a_null_value_is_not_averaged(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed, last in enumerate([44.1, 46.5, 30.0]):
        make_run(root / f"ce_seed{seed}", "cifar10-lt-ce", seed, [40.0, last])
    final = json.loads((root / "ce_seed2" / "final.json").read_text())
    final["final"]["top1"] = None  # diverged: no final top-1; its shot groups and best epoch stand
    (root / "ce_seed2" / "final.json").write_text(json.dumps(final))
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"))
    # last top-1 over 44.1 and 46.5 only: 45.30 ± 1.70; medium (top-1 + 1) has all three values
    assert f"| ce | 3 | {_hand([44.1, 46.5])} (2 of 3) | – | {_hand([45.1, 47.5, 31.0])} |" in text
    assert "(k of n): only k of the group's n runs" in text
    row = _csv(tmp_path / "rep" / "report.csv")["ce"]
    assert (row["n"], row["last_top1_n"], row["last_medium_n"], row["last_many_n"]) == ("3", "2", "3", "0")
    assert abs(float(row["last_top1_mean"]) - 45.3) < 1e-12


@pytest.mark.parametrize("name, text, what", [
    ("final.json", '{"final": {"top1": 4', "not valid JSON"),
    ("final.json", '{"final": 3}', "'epochs_done' is not an integer"),
    ("final.json", '[1, 2]', "not a JSON object"),
    ("config.json", '{"seed": ', "not valid JSON"),
    ("config.json", '"ce"', "not a JSON object"),
    ("metrics.jsonl", '{"epoch": 0, "test_top1": 44.0}\n{"epo\n{"epoch": 1, "test_top1": 40.0}\n',
     "line 2 is not valid JSON"),
    ("metrics.jsonl", '{"epoch": 0, "test_top1": "high"}\n', "line 1 is not an object of one epoch's numbers"),
])
def test_a_damaged_file_gives_one_line(tmp_path: Path, capsys, name: str, text: str, what: str) -> None:
    root = tmp_path / "runs"
    make_run(root / "ce_seed0", "cifar10-lt-ce", 0, [44.0, 40.0])
    make_run(root / "ce_seed1", "cifar10-lt-ce", 1, [44.0, 43.0])
    (root / "ce_seed1" / name).write_text(text)
    assert main(["report", str(root), "--out", str(tmp_path / "rep"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"ltsam: error: {root / 'ce_seed1' / name} is damaged ({what}")
    assert "restore it from a copy, or move its run folder out of the folders you report on" in err
    assert not (tmp_path / "rep").exists()


def test_a_metrics_line_being_written_is_skipped(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    make_run(root / "ce_seed0", "cifar10-lt-ce", 0, [44.0, 40.0], finished=False, epochs=3)
    with open(root / "ce_seed0" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "test_to')  # no newline yet
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"), "--partial")
    assert "| ce | 1 | 40.00 |" in text and "ce_seed0 (2 of 3 epochs)" in text


def test_the_report_never_writes_into_a_folder_it_did_not_make(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    make_run(root / "ce_seed0", "cifar10-lt-ce", 0, [44.0, 40.0])
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "report.md").write_bytes(b"# my own notes\n")
    (mine / "sub" / "report.csv").write_bytes(b"a,b\n1,2\n")

    def snapshot(folder: Path) -> dict[str, bytes | None]:
        return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}

    before = snapshot(mine)
    assert main(["report", str(root), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {mine} holds files that ltsam report did not write (no .ltsam-report marker)" in err
    assert snapshot(mine) == before
    # a new folder is marked, and a later report writes there again
    rep = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(rep), "--no-figures"]) == 0
    assert (rep / ".ltsam-report").read_text().startswith("ltsam-report-v")
    make_run(root / "ce_seed1", "cifar10-lt-ce", 1, [44.0, 43.0])
    assert main(["report", str(root), "--out", str(rep), "--no-figures"]) == 0
    assert f"| ce | 2 | {_hand([40.0, 43.0])} |" in (rep / "report.md").read_text()
    # the default, FIRST_PATH/report, is refused the same way when it is someone else's
    (root / "report").mkdir()
    (root / "report" / "keep.txt").write_text("mine")
    assert main(["report", str(root), "--no-figures"]) == 2
    assert (root / "report" / "keep.txt").read_text() == "mine" and len(list((root / "report").iterdir())) == 1


def test_stage_runs_on_parents_of_different_seeds_form_one_group(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed in range(3):
        parent = root / f"ce_seed{seed}"
        assert main(["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--no-progress",
                     "--loss", "ce", "--optimizer", "sgd", "--seed", str(seed), "--out", str(parent)]) == 0
        assert main(["finetune", str(parent), "--stage", "crt", "--epochs", "1", "--no-progress"]) == 0
    assert main(["finetune", str(root / "ce_seed0"), "--stage", "tau-norm", "--no-progress"]) == 0
    capsys.readouterr()
    finals = [json.loads((root / f"ce_seed{s}_crt" / "final.json").read_text()) for s in range(3)]
    # the field the stage runner now writes: the parent's training configuration, as its config.json has it
    assert finals[1]["parent_config"] == json.loads((root / "ce_seed1" / "config.json").read_text())
    # a stage folder written before that field: the parent's configuration from its last.pt
    older = {k: v for k, v in finals[2].items() if k != "parent_config"}
    (root / "ce_seed2_crt" / "final.json").write_text(json.dumps(older))
    text = _report(capsys, str(root), "--out", str(tmp_path / "rep"))
    rows = _csv(tmp_path / "rep" / "report.csv")
    assert set(rows) == {"ce", "ce_crt", "ce_tau-norm"}
    assert (rows["ce_crt"]["n"], rows["ce_crt"]["seeds"]) == ("3", "0 1 2")
    tops = [f["final"]["top1"] for f in finals]
    assert abs(float(rows["ce_crt"]["last_top1_mean"]) - sum(tops) / 3) < 1e-9
    assert f"| ce_crt | 3 | {_hand(tops)} |" in text
    # tau-norm trains nothing (epochs 0 of 0): finished, counted
    tau = json.loads((root / "ce_seed0_tau-norm" / "final.json").read_text())
    assert (tau["epochs_done"], tau["epochs"]) == (0, 0)
    assert rows["ce_tau-norm"]["n"] == "1" and float(rows["ce_tau-norm"]["last_top1_mean"]) == tau["final"]["top1"]
    assert "Left out" not in text and "Warning" not in text


def test_seedless_names_strip_the_seed_wherever_it_stands() -> None:
    from ltsam.summary_runs import seedless

    cases = {"ce_seed0": "ce", "ce_seed12_crt": "ce_crt", "seed3": "", "seed0_crt": "crt", "myseed0": "myseed0",
             "seeds": "seeds", "a_seed3_b": "a_b"}
    assert {name: seedless(name) for name in cases} == cases
