"""``scripts/gpu_check.sh`` as its header says (issue 30, defect 7): the CPU smoke test its header documents runs
end to end (its ``BASE_EXTRA`` switches included), a pack that fails is reported with its own cause (not as
"stopped by the budget"), the closing timing list names each run's recipe, and the header names no path of
one person's machine."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
RECIPES = ("cifar10-lt-ce", "cifar10-lt-ce-drw", "cifar10-lt-ldam-drw", "cifar10-lt-ce-sam", "cifar10-lt-ce-drw-sam",
           "cifar10-lt-ldam-drw-sam")


def _header() -> list[str]:
    lines = SCRIPT.read_text().splitlines()
    return lines[:next(i for i, ln in enumerate(lines) if not ln.startswith("#"))]


def _smoke_command() -> tuple[dict[str, str], list[str]]:
    """The header's CPU smoke test: (its VAR=value settings, the command after them)."""
    header = _header()
    marker = next(i for i, ln in enumerate(header) if ln.startswith("# CPU smoke test"))
    start = next(i for i in range(marker, len(header)) if header[i].startswith("#     "))  # the indented command
    text = ""
    for line in header[start:]:
        text += line.lstrip("#").strip() + " "
        if not line.rstrip().endswith("\\"):
            break
    words = shlex.split(text.replace("\\ ", " "))
    settings = {}
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        settings[key] = value
    return settings, words


def _run(settings: dict[str, str], command: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT", "WORK", "SEEDS", "EPOCHS")}
    return subprocess.run(command, cwd=ROOT, env=dict(env, **settings), capture_output=True, text=True,
                          timeout=timeout)


def test_the_headers_cpu_smoke_test_runs_end_to_end(tmp_path: Path) -> None:
    """Before: ``BASE_EXTRA="compile: false"`` became ``--compile false`` ("unrecognized arguments: false")."""
    settings, command = _smoke_command()
    assert command == ["bash", "scripts/gpu_check.sh"], command
    assert "compile: false" in settings["BASE_EXTRA"]
    tiny = make_image_folder(tmp_path / "tiny", [100] * 10, [3] * 10, size=32)  # imbalance 0.01 keeps 1 of class 9
    # the documented command, its paths moved into this test's folder (and this interpreter)
    settings.update(PYTHON=sys.executable, DATA_ROOT=str(tiny), WORK=str(tmp_path / "work"), OUT=str(tmp_path / "res"))
    done = _run(settings, command, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    log = (tmp_path / "res" / "gpu_check.log").read_text()
    assert "FAILED" not in log and "stopped by the budget" not in log, log
    seeds = int(settings["SEEDS"])
    for recipe in RECIPES:  # the timing list names each run by its recipe
        for seed in range(seeds):
            assert f"{recipe}/seed{seed} " in log and log.count(f"{recipe}/seed{seed} ") == 1, log
    assert log.count("epochs (done)") == len(RECIPES) * seeds, log
    assert (tmp_path / "res" / "report.md").is_file() and (tmp_path / "res" / "report.tar.gz").is_file()


def test_a_failed_pack_is_reported_with_its_cause(tmp_path: Path) -> None:
    """A pack that stops with an error is named with its status and its log's error line, never as stopped by
    the budget. (Too few images: the imbalance profile leaves classes empty.)"""
    settings, command = _smoke_command()
    tiny = make_image_folder(tmp_path / "tiny", [12] * 10, [2] * 10, size=8)
    settings.update(PYTHON=sys.executable, DATA_ROOT=str(tiny), WORK=str(tmp_path / "work"), OUT=str(tmp_path / "res"),
                    RECIPES="cifar10-lt-ce")
    done = _run(settings, command, timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-2000:]
    log = (tmp_path / "res" / "gpu_check.log").read_text()
    assert "pack cifar10-lt-ce FAILED (status 2)" in log and "classes with no training images" in log, log
    assert "budget" not in log.split("packs:", 1)[1], log


def test_the_header_names_no_path_of_one_machine() -> None:
    header = "\n".join(_header())
    assert "/work/" not in header and "/home/" not in header
