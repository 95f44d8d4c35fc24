"""Faults leave a resumable run: a run killed (SIGKILL) at a precise point, stopped by SIGTERM, or out of
disk space resumes to exactly the run that was never interrupted — same weights, optimizer state,
best.pt and metrics, each epoch once.

The kills are placed by the test hook ``LTSAM_FAULT`` (``ltsam.faults.fault_point``).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ltsam.cli import main
from tests.test_cli_errors import _assert_one_line, _run

SRC = str(Path(__file__).resolve().parents[1] / "src")
# digits, 3 epochs of 9 steps; with seed 3 every epoch is a new best (top-1 21.7, 22.4, 42.0).
FLAGS = ["--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--no-progress", "--seed", "3"]
TIMING = {"seconds", "elapsed", "train_seconds", "out"}  # wall times, and the run's own folder name


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, (list, tuple)):
        return [_strip(v) for v in x]
    return x


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), getattr(b, "keys", b))
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


def _ckpt(path: Path) -> dict[str, Any]:
    return _strip(torch.load(path, map_location="cpu", weights_only=True))


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [_strip(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(run: Path, ref: Path) -> None:
    """``run`` (interrupted, then resumed) is ``ref`` (never interrupted), apart from wall times."""
    last = _ckpt(run / "last.pt")
    _assert_same(last, _ckpt(ref / "last.pt"), "last.pt")  # weights, optimizer state, best record
    best = _ckpt(run / "best.pt")
    _assert_same(best, _ckpt(ref / "best.pt"), "best.pt")
    assert best["epoch"] == last["best_record"]["epoch"] + 1  # best.pt is the run's best epoch
    metrics = _metrics(run)
    assert [m["epoch"] for m in metrics] == [0, 1, 2]  # each epoch once, in order
    assert metrics == _metrics(ref)
    final = _strip(json.loads((run / "final.json").read_text()))
    assert final == _strip(json.loads((ref / "final.json").read_text()))
    assert not list(run.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *FLAGS, "--out", str(out)]) == 0
    return out


def _killed(out: Path, fault: str, flags: list[str] = FLAGS) -> None:
    """`ltsam train` in a child process killed with SIGKILL at ``fault``."""
    env = dict(os.environ, PYTHONPATH=SRC, LTSAM_FAULT=fault)
    proc = subprocess.run([sys.executable, "-m", "ltsam", "train", *flags, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_kill_mid_epoch_resumes_exactly(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed(out, "step@13")  # the 4th step of epoch 2
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def test_kill_while_best_is_written_repairs_best(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed(out, "write:best.pt@3")  # epoch 3 (the best): last.pt written, best.pt not yet replaced
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2  # stale
    assert list(out.glob(".best.pt.*.tmp"))  # the killed write's temporary file
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def test_kill_while_best_val_is_written_repairs_best_val(tmp_path: Path, tmp_path_factory) -> None:
    """With a validation split (3 per class: validation top-1 22.2, 18.5, 25.9, so best_val.pt is written after
    epochs 1 and 3), a kill between last.pt and best_val.pt of epoch 3 leaves best_val.pt stale; --resume
    copies last.pt over it."""
    flags = [*FLAGS, "--val-per-class", "3"]
    ref = tmp_path / "ref"
    assert main(["train", *flags, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    _killed(out, "write:best_val.pt@2", flags)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    assert torch.load(out / "best_val.pt", weights_only=True)["epoch"] == 1  # stale
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, ref)
    best_val = _ckpt(out / "best_val.pt")
    _assert_same(best_val, _ckpt(ref / "best_val.pt"), "best_val.pt")
    assert best_val["epoch"] == best_val["best_val_epoch"] + 1 == 3


def test_kill_in_first_epoch_restarts_from_config(tmp_path: Path, reference: Path, capsys) -> None:
    out = tmp_path / "run"
    _killed(out, "step@4")
    assert not (out / "last.pt").exists() and (out / "config.json").is_file()
    # --resume starts it again from its config.json ...
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "starting it again from its config.json" in capsys.readouterr().out
    _assert_same_run(out, reference)


def test_a_run_killed_in_its_first_epoch_may_be_started_again_with_other_flags(tmp_path: Path, reference: Path,
                                                                              capsys) -> None:
    """Nothing of a run that never finished an epoch is lost by replacing it: a new run into its folder, with
    corrected flags, needs no --overwrite (one with finished epochs does: test_run_folders)."""
    out = tmp_path / "run"
    _killed(out, "step@4", [*FLAGS[:-1], "4"])  # seed 4: the flag the user then corrects
    assert main(["train", *FLAGS, "--out", str(out)]) == 0
    assert "stopped before its first checkpoint; starting anew" in capsys.readouterr().out
    _assert_same_run(out, reference)


def test_kill_while_last_is_written_and_torn_metrics_line(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed(out, "write:last.pt@2")  # epoch 2: its metrics line written, last.pt not yet replaced
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert list(out.glob(".last.pt.*.tmp"))  # an orphan, removed on the next start
    with open(out / "metrics.jsonl", "a") as f:  # and a line torn by a kill or a full disk
        f.write('{"epoch": 2, "lr": 0.0')
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def test_disk_full_while_writing_a_checkpoint(tmp_path: Path, reference: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real_save = torch.save
    calls: list[int] = []

    def save(obj, f, *args, **kwargs):  # the 3rd checkpoint write: epoch 2's last.pt
        calls.append(1)
        if len(calls) == 3:
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code, err = _run(["train", *FLAGS, "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, "no space left on the disk", str(out / "last.pt"), f"--resume {out}")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1  # the previous checkpoint, whole
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def test_a_folder_made_unwritable_mid_run(tmp_path: Path, reference: Path, capsys, monkeypatch) -> None:
    """The system refuses epoch 2's checkpoint (a folder made immutable or read-only while training): one
    line and exit 2, the previous checkpoint whole; once the folder is writable again, resume is exact."""
    import ltsam.io

    out = tmp_path / "run"
    real = ltsam.io._create_temporary
    calls: list[int] = []

    def create(path):  # the 3rd checkpoint's temporary file: epoch 2's last.pt
        if path.name.endswith(".pt"):
            calls.append(1)
            if len(calls) == 3:
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(path.parent / ".last.pt.tmp"))
        return real(path)

    monkeypatch.setattr(ltsam.io, "_create_temporary", create)
    code, err = _run(["train", *FLAGS, "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, "cannot write", os.strerror(errno.EPERM), f"--resume {out}")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def test_disk_full_while_appending_metrics(tmp_path: Path, reference: Path, capsys, monkeypatch) -> None:
    import ltsam.run.records

    out = tmp_path / "run"
    appends: list[int] = []

    class HalfWriter:
        """A metrics file on a full disk: part of the line reaches it, then ENOSPC."""

        def __init__(self, path, mode):
            self.f = open(path, mode)

        def __enter__(self):
            return self

        def write(self, text: str) -> int:
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and mode == "a":
            appends.append(1)
            if len(appends) == 2:
                return HalfWriter(path, mode)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ltsam.run.records, "open", fake_open, raising=False)
    code, err = _run(["train", *FLAGS, "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, "no space left on the disk", f"--resume {out}")
    assert not (out / "metrics.jsonl").read_text().endswith("\n")  # a torn line
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def _start(out: Path, epochs: str = "3") -> subprocess.Popen:
    """A real `ltsam train` in a child process, returned once its first epoch is done."""
    env = dict(os.environ, PYTHONPATH=SRC)
    flags = [*FLAGS[:2], "--epochs", epochs, *FLAGS[4:]]
    proc = subprocess.Popen([sys.executable, "-m", "ltsam", "train", *flags, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch   1/"):
            return proc
    proc.wait()
    raise AssertionError(proc.stderr.read()[-3000:])


def test_folder_in_use_is_refused_then_sigterm_stops_cleanly(tmp_path: Path, reference: Path, capsys) -> None:
    out = tmp_path / "run"
    proc = _start(out)  # a real run, past its first epoch ...
    proc.send_signal(signal.SIGSTOP)  # ... held still wherever it is (epoch 2, or writing a file)
    try:  # A second run on its folder -- new, --overwrite or --resume -- is refused, naming the holder.
        for argv in (["--out", str(out)], ["--out", str(out), "--overwrite"]):
            code, err = _run(["train", *FLAGS, *argv], capsys)
            assert code == 2, argv
            _assert_one_line(err, "in use by another ltsam run", f"pid {proc.pid}")
        code, err = _run(["train", "--resume", str(out)], capsys)
        assert code == 2
        _assert_one_line(err, "in use by another ltsam run", f"pid {proc.pid}")
    finally:
        proc.send_signal(signal.SIGTERM)  # handled as soon as it runs again
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    _assert_one_line(err, "stopped by SIGTERM", f"`ltsam train --resume {out}`")
    assert not list(out.glob(".*.tmp"))
    # The lock went with the process; the run, undisturbed by the refused ones, resumes exactly.
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, reference)


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    from ltsam.trainer import Trainer

    def interrupted(self, stop_after=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = tmp_path / "run"
    code, err = _run(["train", *FLAGS, "--out", str(out)], capsys)
    assert code == 130
    _assert_one_line(err, "interrupted", f"`ltsam train --resume {out}`")
