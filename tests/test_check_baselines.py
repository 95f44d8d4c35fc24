"""scripts/check_baselines.sh (the baselines' learning check for a GPU machine) run end to end on the CPU: one epoch
on a generated 10-class folder of 32x32 PNGs with the script's own imbalance factor 0.01, so a bug in the script
shows here and not on the GPU.

The full run starts seven ltsam processes (two trainings at once, the post-hoc sweep, three stages, the summary):
about a minute on an idle 2-core machine, over two on a loaded one. It runs when ``LTSAM_SCRIPT_TESTS=1`` (before
handing the script to a GPU machine, and in CI jobs with the time); the quick check of its input always runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltsam.data.profiles import lt_counts
from tests.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_baselines.sh"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=900)


@pytest.mark.skipif(os.environ.get("LTSAM_SCRIPT_TESTS") != "1",
                    reason="starts seven ltsam processes; set LTSAM_SCRIPT_TESTS=1 to run it")
def test_check_baselines_runs_every_step_and_summarises(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "tiny", lt_counts(100, 10, "exp", 0.01), [2] * 10, size=32)
    out = tmp_path / "out"
    proc = _run({"EPOCHS": "1", "STAGE_EPOCHS": "1", "DATA_ROOT": str(data), "OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for run in ("ce", "la", "ce_crt", "ce_lws", "ce_tau-norm"):
        final = json.loads((out / run / "final.json").read_text())
        assert final["test_images"] == 20, run
    assert json.loads((out / "la" / "config.json").read_text())["loss"] == "la"
    ce_cfg = json.loads((out / "ce" / "config.json").read_text())
    assert (ce_cfg["loss"], ce_cfg["arch"], ce_cfg["imb_factor"], ce_cfg["epochs"]) == ("ce", "resnet32", 0.01, 1)
    taus = [r["tau"] for r in json.loads((out / "posthoc.json").read_text())["logit_adjust"]]
    assert taus == [0.25 * i for i in range(9)]
    summary = (out / "summary.md").read_text()
    rows = [ln for ln in summary.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["CE", "CE + post-hoc LA, tau 1", rows[2].split(" | ")[0][2:],
                                                     "cRT", "LWS", "tau-norm", "LA loss (tau 1)"]
    assert "missing" not in summary and summary in proc.stdout


def test_check_baselines_needs_data(tmp_path: Path) -> None:
    proc = _run({"DATA_ROOT": str(tmp_path / "nowhere"), "OUT": str(tmp_path / "out")})
    assert proc.returncode == 2 and "DATA_ROOT" in proc.stderr
