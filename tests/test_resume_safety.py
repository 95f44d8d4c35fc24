"""Resuming never loses a run: a run or pack member with finished epochs but no last.pt is reported, never wiped;
a pack's members are found inside its own folder (moved or not) and a missing one is named; a signal stops a
threads-mode pack cleanly and names the pack; members files (``--members FILE --out DIR``) are handed data. All
through the CLI, as a user meets them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ltsam.cli import main
from tests.test_cli_errors import _assert_one_line, _run

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--no-progress"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file aside: it only names the last holder) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".ltsam-lock"}


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def half_pack(tmp_path_factory) -> Path:
    """A --seeds pack of three members stopped after the first of its two epochs, trained from the working folder
    with a relative --out (its members' records name "pack")."""
    root = tmp_path_factory.mktemp("half")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main([*TRAIN, "--seeds", "0", "1", "2", "--out", "pack", "--stop-after", "1"]) == 0
    finally:
        os.chdir(cwd)
    return root / "pack"


def _copy(pack: Path, to: Path) -> Path:
    shutil.copytree(pack, to)
    return to


# ------------------------------------------------------------------------------- defect 1: nothing is ever deleted
def test_pack_resume_after_a_lost_last_pt_deletes_nothing_and_says_what_to_do(half_pack, tmp_path, monkeypatch,
                                                                              capsys):
    out = _copy(half_pack, tmp_path / "pack")
    monkeypatch.chdir(tmp_path)  # where the pack was made: its records' "pack" is this folder
    (out / "seed1" / "last.pt").unlink()
    before = _snapshot(out)
    code, err = _run(["train", "--resume", str(out), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, str(out / "seed1"), "finished epochs", "metrics.jsonl (1 epoch)", "best.pt", "final.json",
                     "no last.pt", "nothing was changed", f"`ltsam train --resume {out}`")
    assert _snapshot(out) == before  # best.pt, metrics.jsonl, final.json, figures: all still there
    # The way out it names: best.pt (here the last epoch's) as last.pt, then the pack resumes to its end.
    shutil.copy(out / "seed1" / "best.pt", out / "seed1" / "last.pt")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert all(_epochs(out / s) == [0, 1] and (out / s / "final.json").is_file() for s in ("seed0", "seed1", "seed2"))


def test_a_run_with_finished_epochs_but_no_last_pt_is_never_wiped(tmp_path, capsys):
    """`--resume RUN` used to start it again from epoch 0, and a new run into its folder asked only to pass the
    flag that did so; both now refuse, touching nothing, and only --overwrite replaces it."""
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run), "--stop-after", "1"]) == 0
    (run / "last.pt").unlink()
    before = _snapshot(run)
    code, err = _run(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, f"--resume {run}", "finished epochs", "best.pt", "no last.pt", "nothing was changed")
    code, err = _run([*TRAIN, "--out", str(run)], capsys)
    assert code == 2
    _assert_one_line(err, "finished epochs", "--overwrite")
    assert _snapshot(run) == before


def test_members_never_restart_a_run_with_finished_epochs(tmp_path, capsys):
    sweep = tmp_path / "sw"
    (sweep / "settings").mkdir(parents=True)
    for name, loss in (("a", "ce"), ("b", "focal")):
        (sweep / "settings" / f"{name}.json").write_text(json.dumps(
            {"dataset": "digits", "epochs": 2, "batch-size": 64, "loss": loss}))
    members = sweep / "pack.json"
    members.write_text(json.dumps({"members": [{"config": "settings/a.json", "out": "runs/a"},
                                               {"config": "settings/b.json", "out": "runs/b"}]}))
    assert main(["train", "--config", str(sweep / "settings" / "a.json"), "--out", str(sweep / "runs" / "a"),
                 "--stop-after", "1", "--no-progress"]) == 0
    (sweep / "runs" / "a" / "last.pt").unlink()
    before = _snapshot(sweep)
    code, err = _run(["train", "--members", str(members), "--out", str(sweep), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, str(sweep / "runs" / "a"), "finished epochs", "no last.pt", "nothing was changed")
    assert _snapshot(sweep) == before and not (sweep / "runs" / "b").exists()


# ------------------------------------------------------------------- defect 3: a pack's members, found in its folder
def test_a_pack_missing_a_member_is_refused_naming_it(half_pack, tmp_path, monkeypatch, capsys):
    out = _copy(half_pack, tmp_path / "pack")
    monkeypatch.chdir(tmp_path)  # where the pack was made
    shutil.rmtree(out / "seed2")
    before = _snapshot(out)
    code, err = _run(["train", "--resume", str(out), "--no-progress"], capsys)
    assert code == 2  # not exit 0 with a report over two of three seeds
    _assert_one_line(err, "seed2", "missing", "pack of 3")
    assert _snapshot(out) == before


def test_a_member_whose_record_names_another_pack_is_refused(half_pack, tmp_path, monkeypatch, capsys):
    out = _copy(half_pack, tmp_path / "pack")
    monkeypatch.chdir(tmp_path)  # where the pack was made
    config = out / "seed1" / "config.json"
    saved = json.loads(config.read_text())
    saved["pack"] = dict(saved["pack"], folder="other", members=["other/seed0", "other/seed1", "other/seed2"])
    config.write_text(json.dumps(saved))
    code, err = _run(["train", "--resume", str(out), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, "seed1", "not one of this pack's members", "other")


def test_a_moved_pack_resumes_from_another_working_folder(half_pack, tmp_path, monkeypatch, capsys):
    out = _copy(half_pack, tmp_path / "moved" / "renamed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "resuming the pack of 3 runs" in capsys.readouterr().out
    for s in ("seed0", "seed1", "seed2"):
        assert _epochs(out / s) == [0, 1]
        assert json.loads((out / s / "final.json").read_text())["epochs_done"] == 2
    assert sorted(p.name for p in elsewhere.iterdir()) == []


def test_a_member_that_never_finished_an_epoch_catches_up(half_pack, tmp_path, capsys):
    """A kill between two members' first checkpoints: the member without one starts again and catches up (the
    hint used to name that member alone, which would split the pack)."""
    out = _copy(half_pack, tmp_path / "pack")
    run = out / "seed2"
    for name in ("last.pt", "best.pt", "metrics.jsonl", "final.json", "per_class_accuracy.png",
                 "confusion_matrix.png"):
        (run / name).unlink(missing_ok=True)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "seed2 never finished an epoch: it starts again from config.json and catches up" in capsys.readouterr().out
    assert all(_epochs(out / s) == [0, 1] for s in ("seed0", "seed1", "seed2"))


# -------------------------------------------------------------------------------- defect 4: signals in threads mode
POOL = """
import os, signal, sys, threading, torch
from ltsam.pack.threads import MemberThreads
pool = MemberThreads(2, 1)
def job():
    a = torch.randn(1200, 1200)
    for _ in range(60):
        a = a @ a
        a = a / a.norm()
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    pool.map([job, job, job, job])
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_an_interrupted_pool_drains_its_workers_before_exiting():
    """Ctrl-C while the workers run their kernels: the process exits 130, not abort()s (exit 134, "terminate called
    without an active exception") because a worker was still inside a kernel as the interpreter ended."""
    proc = subprocess.run([sys.executable, "-c", POOL], env=dict(os.environ, PYTHONPATH=SRC), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr


def test_sigterm_of_a_threads_pack_exits_143_naming_the_pack(tmp_path):
    out = tmp_path / "pack"
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-m", "ltsam", *TRAIN[:4], "3", "--batch-size", "16", "--no-progress",
                             "--seeds", "0", "1", "--pack-mode", "threads", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("pack epoch   1/"):  # mid-way through epoch 2
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    _assert_one_line(err, "stopped by SIGTERM", f"`ltsam train --resume {out}`")
    assert "seed" not in err and not list(out.rglob(".*.tmp"))


# ----------------------------------------------------------------------- defects 8-10: refused before anything is made
def _members_file(folder: Path, entries: list[tuple[str, str]], settings: dict | None = None) -> Path:
    """``folder/packs/p.json`` naming ``entries`` (config, out), with ``folder/settings/*.json`` written."""
    (folder / "settings").mkdir(parents=True, exist_ok=True)
    (folder / "packs").mkdir(exist_ok=True)
    for name in ("a", "b"):
        (folder / "settings" / f"{name}.json").write_text(json.dumps(
            settings or {"dataset": "digits", "epochs": 1, "batch-size": 64, "loss": "ce" if name == "a" else "focal"}))
    path = folder / "packs" / "p.json"
    path.write_text(json.dumps({"members": [{"config": c, "out": o} for c, o in entries]}))
    return path


@pytest.mark.parametrize("entries, extra, words", [
    ([("../settings/a.json", "../runs/a"), ("../settings/b.json", "../runs/a")], [], ["runs/a", "twice"]),
    ([("../settings/a.json", "../runs/a"), ("../settings/b.json", "../../b")], [], ["lies outside --out"]),
    ([("../settings/a.json", "../runs/a")], ["--no-out"], ["needs --out DIR"]),
])
def test_a_members_file_is_handed_data(tmp_path, capsys, entries, extra, words):
    sweep = tmp_path / "sw"
    members = _members_file(sweep, entries)
    out = [] if extra == ["--no-out"] else ["--out", str(sweep)]
    code, err = _run(["train", "--members", str(members), *out, "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, *words)
    assert not (sweep / "runs").exists() and not (tmp_path / "b").exists()


def test_a_members_files_plugins_must_be_named_on_the_command_line(tmp_path, capsys):
    sweep = tmp_path / "sw"
    members = _members_file(sweep, [("../settings/a.json", "../runs/a")],
                            {"dataset": "digits", "epochs": 1, "plugin": ["tests.no_such_plugin"]})
    code, err = _run(["train", "--members", str(members), "--out", str(sweep), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line(err, "tests.no_such_plugin", "--plugin tests.no_such_plugin")
    assert not (sweep / "runs").exists() and "tests.no_such_plugin" not in sys.modules


def test_members_paths_are_read_against_the_members_file(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sw"
    members = _members_file(sweep, [("../settings/a.json", "../runs/a"), ("../settings/b.json", "../runs/b")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--members", str(members), "--out", str(sweep), "--no-progress"]) == 0
    assert all(_epochs(sweep / "runs" / r) == [0] for r in ("a", "b"))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("seeds", [["-1", "2"], ["0", str(2**32)]])
def test_seeds_out_of_range_are_one_line(tmp_path, capsys, seeds):
    code, err = _run([*TRAIN, "--seeds", *seeds, "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    _assert_one_line(err, "--seeds", "4294967295")
    assert not (tmp_path / "x").exists()


def test_a_pack_that_finds_a_member_in_use_leaves_nothing_behind(tmp_path, capsys):
    """The losing pack of two started into one folder: it is refused at the member in use, and the folders it
    would have made or replaced before it are untouched."""
    from ltsam.runs import RunLock, new_marker

    out = tmp_path / "pack"
    (out / "seed1").mkdir(parents=True)
    (out / "seed1" / ".ltsam-run").write_text(new_marker())
    lock = RunLock(out / "seed1")  # the winner, training seed1
    try:
        code, err = _run([*TRAIN, "--seeds", "0", "1", "--out", str(out)], capsys)
    finally:
        lock.release()
    assert code == 2
    _assert_one_line(err, "in use", f"pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == ["seed1"]


def test_a_lost_middle_epoch_of_metrics_is_named_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN[:4], "3", *TRAIN[5:], "--out", str(run), "--stop-after", "2"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[1] + "\n")  # epoch 1's record lost
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "has no record of epoch 1 of the 2 its last.pt has finished" in capsys.readouterr().out


SIGNAL_IN_SAVE = """
import os, signal, sys, torch
from ltsam.cli import main
real = torch.save

class Writer:  # the file torch.save writes through (its C++ writer calls write() back in Python)
    def __init__(self, f):
        self.f, self.calls = f, 0
    def write(self, b):
        self.calls += 1
        if self.calls == 3 and not FIRED:  # inside the first checkpoint: epoch 1's last.pt
            FIRED.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return self.f.write(b)
    def flush(self):
        self.f.flush()

FIRED = []
def save(obj, f, *args, **kwargs):
    return real(obj, Writer(f), *args, **kwargs)

torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_a_checkpoint_is_written_waits_for_it(tmp_path):
    """A stop that arrives inside torch.save (its C++ writer calling back into Python) waits for the checkpoints:
    exit 143 with one line, no torn record ("unexpected pos") or abort."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_SAVE, *TRAIN, "--out", str(out)],
                          env=dict(os.environ, PYTHONPATH=SRC), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-3000:]
    _assert_one_line(proc.stderr, "stopped by SIGTERM", f"`ltsam train --resume {out}`")
    assert not list(out.glob(".*.tmp"))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # its last.pt whole: it resumes
