"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing the user had changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltsam.cli import main
from tests.conftest import FAST_DIGITS


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _assert_one_line(err: str, *words: str) -> str:
    """``err`` is one line without a traceback, holding every one of ``words``; returns the line."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--imb-factor", "0"], ["--imb-factor", "(0, 1]"]),
    (["--imb-factor", "1.5"], ["--imb-factor"]),
    (["--loss", "hinge"], ["--loss", "ce, focal, ldam, vs"]),
    (["--train-rule", "magic"], ["--train-rule"]),
    (["--arch", "vgg99"], ["--arch", "resnet32"]),
    (["--recipe", "nope"], ["recipe", "ltsam recipes"]),
    (["--rho", "-0.1"], ["--rho", "non-negative"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--imb-type", "zigzag"], ["--imb-type"]),
    (["--imb-factor", "abc"], ["--imb-factor"]),
    (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], ["cifar10", "--download"]),
    (["--dataset", "folder", "--data-root", "/nonexistent/imgs"], ["/nonexistent/imgs"]),
])
def test_bad_flags(tmp_path: Path, capsys, flags: list[str], words: list[str]) -> None:
    out = tmp_path / "run"
    code, err = _run(["train", *FAST_DIGITS, "--out", str(out), *flags], capsys)
    assert code == 2
    _assert_one_line(err, *words)
    assert not out.exists()  # nothing was created


def test_existing_folder_that_is_not_a_run_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # With or without --overwrite, a folder that is not an ltsam run is never touched.
    for extra in ([], ["--overwrite"]):
        code, err = _run(["train", *FAST_DIGITS, "--out", str(out), *extra], capsys)
        assert code == 2
        _assert_one_line(err, "not an ltsam run folder", "another --out")
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
        assert (out / "notes.txt").read_text() == "mine"


def test_resume_with_another_architecture_or_corrupt_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "last.pt").read_bytes()
    code, err = _run(["train", "--resume", str(out), "--arch", "resnet20"], capsys)
    assert code == 2
    _assert_one_line(err, "--arch")
    # A checkpoint of another architecture under the run's name.
    import torch

    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["model_meta"] = dict(ckpt["model_meta"], arch="resnet20")
    torch.save(ckpt, out / "last.pt")
    code, err = _run(["train", "--resume", str(out), "--epochs", "2"], capsys)
    assert code == 2
    _assert_one_line(err, "cannot resume")
    (out / "last.pt").write_bytes(b"not a checkpoint at all")
    code, err = _run(["train", "--resume", str(out), "--epochs", "2"], capsys)
    assert code == 2
    _assert_one_line(err, "corrupt")
    code, err = _run(["eval", str(out / "last.pt")], capsys)
    assert code == 2
    _assert_one_line(err, "corrupt")
    assert (out / "best.pt").read_bytes() != b""
    assert before  # the original was a real checkpoint


def test_foreign_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    import torch

    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    code, err = _run(["eval", str(path)], capsys)
    assert code == 2
    _assert_one_line(err, "not an ltsam checkpoint")


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.run([sys.executable, "-m", "ltsam", "train", "--loss", "nope"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    _assert_one_line(proc.stderr, "--loss")
