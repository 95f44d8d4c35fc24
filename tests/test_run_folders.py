"""Run folders: ltsam deletes only what it wrote, never a folder that is not its own; resume says what
it does; files follow the umask. (The lock on a folder in use: tests/test_faults.py.)"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from tests.conftest import FAST_DIGITS
from tests.test_cli_errors import _assert_one_line, _run


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_overwrite_never_deletes_a_folder_holding_just_a_config_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "P"
    (out / "src").mkdir(parents=True)
    (out / "src" / "main.py").write_text("x\n")
    (out / "config.json").write_text("{}\n")
    before = _snapshot(out)
    code, err = _run(["train", *FAST_DIGITS, "--out", str(out), "--overwrite"], capsys)
    assert code == 2
    _assert_one_line(err, "not an ltsam run folder", ".ltsam-run")
    assert _snapshot(out) == before  # byte for byte, and no lock file added


def test_overwrite_refuses_a_run_folder_holding_foreign_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine\n")
    (out / "src").mkdir()
    (out / "src" / "main.py").write_text("x\n")
    capsys.readouterr()
    before = _snapshot(out)
    code, err = _run(["train", *FAST_DIGITS, "--out", str(out), "--overwrite"], capsys)
    assert code == 2
    _assert_one_line(err, "did not write", "notes.txt", "src/")
    assert _snapshot(out) == before


def test_overwrite_replaces_only_ltsams_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    (out / ".last.pt.k3j9x2ab.tmp").write_bytes(b"orphan of a killed write")
    (out / "hessian" / "test").mkdir(parents=True)  # `ltsam hessian` output of the old run
    code, err = _run(["train", *FAST_DIGITS, "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, "already exists", "--overwrite", "--resume")
    assert main(["train", *FAST_DIGITS, "--out", str(out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert ".last.pt.k3j9x2ab.tmp" not in names and "hessian" not in names
    marker = (out / ".ltsam-run").read_text().splitlines()
    assert marker[0] == "ltsam-run-v1" and re.fullmatch(r"id [0-9a-f]{16}", marker[1]), marker
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_a_start_killed_before_its_marker_is_not_mistaken_for_a_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ltsam-lock").write_text("12345\n")
    (out / "..ltsam-run.k3j9x2ab.tmp").write_text("ltsam-r")
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    assert not (out / "..ltsam-run.k3j9x2ab.tmp").exists() and (out / "last.pt").is_file()


@pytest.mark.parametrize("where", [".", "..", "/", "~"])
def test_out_must_be_a_folder_of_its_own(tmp_path: Path, capsys, monkeypatch, where: str) -> None:
    home, cwd = tmp_path / "home", tmp_path / "home" / "work" / "project"
    cwd.mkdir(parents=True)
    (cwd / "config.json").write_text("{}\n")  # looked like a run to an older ltsam
    (cwd / "main.py").write_text("x\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    before = _snapshot(home)
    out = str(home) if where == "~" else where
    code, err = _run(["train", *FAST_DIGITS, "--out", out, "--overwrite"], capsys)
    assert code == 2
    _assert_one_line(err, f"--out {out}", "a folder of its own")
    assert _snapshot(home) == before


def test_resume_clears_orphan_temporary_files_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    orphans = [".last.pt.k3j9x2ab.tmp", ".best.pt.0123abcd.tmp", ".config.json.a_b_c_d_.tmp"]
    for name in orphans:
        (out / name).write_bytes(b"half a file")
    (out / ".mydata.k3j9x2ab.tmp").write_text("not ltsam's\n")
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert not any((out / name).exists() for name in orphans)
    assert (out / ".mydata.k3j9x2ab.tmp").read_text() == "not ltsam's\n"


def test_resume_with_other_epochs_or_out_says_what_it_does(tmp_path: Path, capsys) -> None:
    out, other = tmp_path / "run", tmp_path / "elsewhere"
    assert main(["train", *FAST_DIGITS, "--stop-after", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "3", "--out", str(other), "--no-progress"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ltsam: resuming")]
    assert notes == [f"ltsam: resuming {out} after epoch 1 of 3; --epochs 3 replaces the saved 2 (the LR schedule "
                     f"follows the new length; DRW keeps its saved switch epoch 2); --out {other} is ignored: a "
                     f"resumed run stays in its own folder"]
    assert not other.exists()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    code, err = _run(["train", "--resume", str(out), "--epochs", "2"], capsys)
    assert code == 2
    _assert_one_line(err, "--epochs 2", "already finished 3 epochs")
    assert main(["train", "--resume", str(out), "--overwrite", "--no-progress"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ltsam: ")]
    assert notes[0] == (f"ltsam: {out} has finished its 3 epochs; recomputing its final results; "
                        f"--overwrite is ignored: --resume keeps the run")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


def test_every_file_follows_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert {"last.pt", "best.pt", "config.json", "final.json", "metrics.jsonl", ".ltsam-run"} <= modes.keys()
    assert set(modes.values()) == {0o640}, modes
