"""A refused command leaves nothing behind, and bad settings files or values are one short line (issue 30, items 8
and 9): every check that can be made (the settings file, every number, the device, the model with its weights file,
the optimizer, a second stage's head) is made before a run folder exists, so the corrected command runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from ltsam.errors import UserError
from tests.conftest import FAST_DIGITS
from tests.test_cli_errors import _assert_one_line

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="--device cuda is refused only without a CUDA GPU")
TIMM = pytest.mark.skipif(not __import__("importlib").util.find_spec("timm"), reason="needs timm")
VIT = ["--arch", "timm:test_vit", "--optimizer", "sgd", "--loss", "ce"]  # timm's tiny test ViT, built offline


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def _bomb(levels: int, indent: int = 2) -> str:
    """YAML list items that expand to 9**levels values through aliases (a few hundred bytes)."""
    lines = ["- &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"- &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "".join(" " * indent + line + "\n" for line in lines)


# -- item 9: a refused command leaves no folder --------------------------------------------------------------------
@pytest.mark.parametrize("flags, words", [
    pytest.param([*VIT, "--pretrained", "{tmp}/no_such.pt"], ["--pretrained", "no_such.pt"], marks=TIMM,
                 id="pretrained-missing"),
    pytest.param([*VIT, "--pretrained", "{tmp}/garbage.pt"], ["garbage.pt"], marks=TIMM, id="pretrained-garbage"),
    pytest.param([*VIT, "--pretrained", "{tmp}/no_such.pt", "--seeds", "0", "1"], ["--pretrained"], marks=TIMM,
                 id="pretrained-missing-one-by-one-seeds"),
    pytest.param([*VIT, "--pretrained", "none", "--input-size", "100000"], ["--input-size", "8192"], marks=TIMM,
                 id="input-size"),
    pytest.param(["--threads", "100000"], ["--threads", "1024"], id="threads"),
    pytest.param(["--image-size", "100000"], ["--image-size", "8192"], id="image-size"),
    pytest.param(["--device", "cuda"], ["--device cuda"], marks=NO_GPU, id="cuda"),
    pytest.param(["--seeds", "0", "1", "--device", "cuda"], ["--device cuda"], marks=NO_GPU, id="cuda-pack"),
    pytest.param([*VIT, "--pretrained", "none", "--seeds", "0", "1", "--device", "cuda"], ["--device cuda"],
                 marks=[NO_GPU, TIMM], id="cuda-one-by-one-seeds"),
    pytest.param(["--seeds", "-1", "2"], ["--seeds", "4294967295"], id="negative-seed"),
    pytest.param(["--seeds", "0", str(2**32)], ["--seeds", "4294967295"], id="seed-past-numpy"),
])
def test_a_refused_train_leaves_no_folder(tmp_path: Path, capsys, flags: list[str], words: list[str]) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a checkpoint" * 10)
    out = tmp_path / "out"
    code, err = _run(["train", *FAST_DIGITS, *[f.format(tmp=tmp_path) for f in flags], "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, *words)
    assert not out.exists()


@pytest.fixture(scope="module")
def ldam_parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent") / "ldam"  # the digits default: LDAM, a cosine (NormedLinear) head
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_tau_norm_on_a_cosine_head_leaves_no_folder(ldam_parent: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tau"
    code, err = _run(["finetune", str(ldam_parent), "--stage", "tau-norm", "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, "cosine head")
    assert not out.exists()


# -- item 8: settings files that are too deep or expand without bound --------------------------------------------
def test_deep_json_config_and_members_are_one_line(tmp_path: Path, capsys) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for argv in (["--config", str(deep), *FAST_DIGITS, "--out", str(tmp_path / "out")],
                 ["--members", str(deep), "--out", str(tmp_path / "runs")]):
        code, err = _run(["train", *argv], capsys)
        assert code == 2
        _assert_one_line(err, "deep.json", "too deeply")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("via", ["config", "members"])
def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path: Path, capsys, via: str) -> None:
    """9**6 values from 7 lines: refused while counting them, never echoed (the whole expansion was the message)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("lr:\n" + _bomb(6))
    members = tmp_path / "members.json"
    members.write_text(json.dumps({"members": [{"config": str(bomb), "out": str(tmp_path / "runs" / "m0")}]}))
    argv = ["--config", str(bomb), "--out", str(tmp_path / "out")] if via == "config" else \
        ["--members", str(members), "--out", str(tmp_path / "runs")]
    code, err = _run(["train", *argv], capsys)
    assert code == 2
    _assert_one_line(err, "bomb.yaml", "expands to more than 100,000 values")
    assert len(err) < 300
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_sweep_grid_alias_bomb_is_refused_in_one_short_line(tmp_path: Path, capsys) -> None:
    """A grid is handed data too: the same bound, nothing expanded or echoed, no sweep folder."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("configs:\n  a:\n    lr:\n" + _bomb(9, indent=6))
    code, err = _run(["sweep", str(grid), "--out", str(tmp_path / "sw"), "--dry-run"], capsys)
    assert code == 2
    _assert_one_line(err, "grid file", "grid.yaml", "expands to more than 100,000 values")
    assert len(err) < 300
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("text, words", [
    ("configs:\n  a:\n    lr:\n" + _bomb(9, indent=6), ["expands to more than"]),
    ("lr: &a [*a]\n", ["more than 32 levels"]),  # a list that contains itself
    ("lr: " + "[" * 50_000 + "]" * 50_000 + "\n", ["too deeply"]),
    ("lr: " + "9" * 5000 + "\n", ["cannot be read"]),  # past Python's 4300-digit limit
    ("lr: [1\n", ["not valid YAML"]),
])
def test_read_settings_file_refuses_in_one_line(tmp_path: Path, text: str, words: list[str]) -> None:
    """The reader the settings files share (--config, a members file's settings, a sweep grid): quick, one line."""
    from ltsam.io import read_settings_file

    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        read_settings_file(grid, "grid file")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert message.startswith(f"grid file {grid}") and "\n" not in message and len(message) < 300
    for word in words:
        assert word in message


def test_read_settings_file_keeps_aliases_that_stay_small(tmp_path: Path) -> None:
    from ltsam.io import read_settings_file

    grid = tmp_path / "grid.yaml"
    grid.write_text("base: &b {epochs: 2}\nconfigs:\n  a: *b\n  b: {<<: *b, lr: 0.1}\n")
    assert read_settings_file(grid, "grid file") == {"base": {"epochs": 2}, "configs": {"a": {"epochs": 2},
                                                                                      "b": {"epochs": 2, "lr": 0.1}}}


def test_brief_shortens_any_value() -> None:
    from ltsam.argtypes import brief

    value: list = ["lol"] * 9
    for _ in range(9):  # 9**10 strings if written out
        value = [value] * 9
    start = time.perf_counter()
    assert len(brief(value)) <= 80 and brief(value).startswith("[[[")
    loop: list = []
    loop.append(loop)
    assert len(brief(loop)) <= 80 and len(brief("x" * 10**6)) <= 80 and len(brief(10**5000)) <= 80
    assert time.perf_counter() - start < 1
    assert brief(0.5) == "0.5" and brief("ce") == "'ce'"


def test_a_wrong_value_in_a_config_is_shown_cut(tmp_path: Path, capsys) -> None:
    """A value that fits the bounds but is long (a list of 50,000 numbers for --lr) is cut in the message."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lr": list(range(50_000))}))
    code, err = _run(["train", "--config", str(config), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert len(_assert_one_line(err, "--lr takes one value")) < 300


# -- item 8: values outside the ranges of the formulas ---------------------------------------------------------------
@pytest.mark.parametrize("flags, words", [
    (["--loss", "ldam", "--ldam-s", "0"], ["--ldam-s must be positive"]),  # s scales the logits: s > 0
    (["--loss", "ldam", "--ldam-s", "-30"], ["--ldam-s must be positive"]),
    (["--loss", "ldam", "--margin", "-1"], ["--margin must be positive"]),  # LDAM's max_m > 0
    (["--loss", "ldam", "--margin", "0"], ["--margin must be positive"]),
    (["--optimizer", "sse_sam", "--sse-gamma", "2"], ["--sse-gamma must be at most 1"]),  # a fraction of the run
    (["--optimizer", "sse_sam", "--sse-gamma", "-0.1"], ["--sse-gamma"]),
])
def test_values_outside_their_formulas_are_refused(tmp_path: Path, capsys, flags: list[str],
                                                   words: list[str]) -> None:
    out = tmp_path / "out"
    code, err = _run(["train", *FAST_DIGITS, *flags, "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, *words)
    assert not out.exists()


def test_an_architecture_the_method_cannot_train_is_not_called_unknown(tmp_path: Path, capsys) -> None:
    code, err = _run(["train", *FAST_DIGITS, "--method", "glmc", "--arch", "clip:ViT-B-16", "--out",
                      str(tmp_path / "out")], capsys)
    assert code == 2
    line = _assert_one_line(err, "--method glmc does not support clip: backbones", "glmc_resnet32")
    assert "unknown" not in line


@pytest.mark.parametrize("settings", [dict(loss="ldam", ldam_s=1e-3, margin=1e-3),
                                      dict(optimizer="sse_sam", sse_gamma=0.0),
                                      dict(optimizer="sse_sam", sse_gamma=1.0)])
def test_values_at_the_ends_of_their_ranges_are_kept(settings: dict) -> None:
    from ltsam.config import resolve

    cfg = resolve(dict(dataset="digits", **settings))
    assert all(getattr(cfg, k) == v for k, v in settings.items())
