"""The reference run.sh's ImageNet-LT and iNaturalist-2018 lines, as copied with
the script name replaced: ``*_train.py`` by ``ltsam train --optimizer sgd``, ``*_train_sam.py`` by
``ltsam train``. Each parses to its recipe's configuration and trains on generated list files."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from ltsam.cli import build_parser, main
from ltsam.config import resolve
from ltsam.recipes import get_recipe
from ltsam.train_flags import train_overrides
from tests.test_listfile import make_list_dataset

COMMON = "--gpu 0 --imb_type exp --imb_factor 0.01 --log_results"
INAT = "--data_path inat_18 --dataset inat_18 -b 256 --epochs 90 --arch resnet50 --cos_lr"
IMNET = "--data_path ImageNet --dataset imagenet -b 256 --epochs 90 --arch resnet50 --cos_lr"
SGD, SAM = "ltsam train --optimizer sgd", "ltsam train"

# (recipe, line) for every large-data line of run.sh.
LINES = [
    ("inat18-ce-drw", f"{SGD} {COMMON} {INAT} --loss_type CE --train_rule DRW --lr 0.1 --seed 0"),
    ("inat18-ldam-drw", f"{SGD} {COMMON} {INAT} --loss_type LDAM --train_rule DRW --lr 0.1 --wd 1e-4 --margin 0.3 "
                        f"--seed 0"),
    ("inat18-ce-drw-sam", f"{SAM} {COMMON} {INAT} --loss_type CE --train_rule DRW --lr 0.1 --rho_schedule step "
                          f"--rho_steps 0.05 0.1 0.1 0.2 --seed 1 --exp_str 0"),
    ("inat18-ldam-drw-sam", f"{SAM} {COMMON} {INAT} --loss_type LDAM --train_rule DRW --lr 0.1 --wd 1e-4 "
                            f"--margin 0.3 --rho_schedule step --rho_steps 0.05 0.1 0.5 0.5 --seed 0"),
    ("imagenet-lt-ce-drw", f"{SGD} {COMMON} {IMNET} --loss_type CE --train_rule DRW --lr 0.2 --wd 2e-4 --seed 1"),
    ("imagenet-lt-ldam-drw", f"{SGD} {COMMON} {IMNET} --loss_type LDAM --train_rule DRW --lr 0.2 --wd 2e-4 "
                             f"--margin 0.3 --seed 0"),
    ("imagenet-lt-ce-drw-sam", f"{SAM} {COMMON} {IMNET} --loss_type CE --train_rule DRW --lr 0.2 --wd 2e-4 "
                               f"--rho_schedule step --rho_steps 0.05 0.1 0.5 0.5 --seed 0"),
    ("imagenet-lt-ldam-drw-sam", f"{SAM} {COMMON} {IMNET} --loss_type LDAM --train_rule DRW --lr 0.2 --wd 2e-4 "
                                 f"--margin 0.3 --rho_schedule step --rho_steps 0.05 0.1 0.5 0.5 --seed 0"),
]
# Keys that make a run what it is (where the data lie and how fast it runs do not).
COMPARED = ("dataset", "arch", "method", "loss", "train_rule", "optimizer", "rho_schedule", "rho_steps", "epochs",
            "batch_size", "lr", "lr_schedule", "momentum", "wd", "seed", "imb_type", "imb_factor", "margin",
            "drw_epoch", "beta", "use_norm")


def _argv(line: str) -> list[str]:
    words = shlex.split(line)
    assert words[:2] == ["ltsam", "train"]
    return words[1:]


@pytest.mark.parametrize("recipe, line", LINES, ids=[r for r, _ in LINES])
def test_line_parses_to_its_recipe(recipe: str, line: str, capsys) -> None:
    cfg = resolve(train_overrides(build_parser().parse_args(_argv(line))))
    want = resolve({}, get_recipe(recipe))
    assert {k: getattr(cfg, k) for k in COMPARED} == {k: getattr(want, k) for k in COMPARED}
    assert cfg.data_root in ("inat_18", "ImageNet")


def _reference_layout(cwd: Path) -> None:
    """inat_18/ and ImageNet/ folders with the reference's list-file names, images beside them."""
    for folder, (train, test) in (("inat_18", ("iNaturalist18_train.txt", "iNaturalist18_val.txt")),
                                  ("ImageNet", ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt"))):
        root = make_list_dataset(cwd / folder)
        (root / "ImageNet_LT_train.txt").rename(root / train)
        (root / "ImageNet_LT_test.txt").rename(root / test)


def test_every_line_trains_as_copied(tmp_path: Path, monkeypatch, capsys) -> None:
    """Each line, with only a shorter run appended (one epoch of the 90-epoch schedule, 32-pixel crops,
    no loader workers), trains into runs/<name> under the working directory."""
    _reference_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    short = ["--stop-after", "1", "--image-size", "32", "-j", "0", "--no-progress"]
    for recipe, line in LINES:
        assert main([*_argv(line), *short]) == 0, recipe
        out = capsys.readouterr().out
        assert "--gpu 0: no CUDA GPU" in out or "cuda" in out
        runs = sorted((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        cfg = json.loads((runs[-1] / "config.json").read_text())
        assert cfg["lr_schedule"] == "cosine" and cfg["epochs"] == 90 and cfg["data_root"] in ("inat_18", "ImageNet")
        assert len((runs[-1] / "metrics.jsonl").read_text().splitlines()) == 1
    assert len(list((tmp_path / "runs").iterdir())) == len(LINES)  # one folder per line (names differ)


def test_reference_aliases_are_listed_in_help() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--log_results", "--exp_str", "--cos_lr", "--data_path", "--gpu"):
        assert flag in text, flag


def test_data_set_defaults_are_said_at_start(tmp_path, capsys) -> None:
    """A reference-style digits line gets the digits defaults, and the run says which ones at start."""
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "defaults in effect" in ln)
    for said in ("--batch-size 32", "--lr 0.05", "--wd 0.0005", "--arch small_cnn", "--loss ldam"):
        assert said in line, (said, line)
    assert "--epochs" not in line  # given on the command line, so not a default
