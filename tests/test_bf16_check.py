"""scripts/bf16_check.sh and its table (scripts/bf16_table.py): the table from written metrics.jsonl files (always),
and the script end to end for one epoch on a generated 10-class folder (six ltsam processes, a few minutes on a
2-core CPU: only when ``LTSAM_SCRIPT_TESTS=1``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "scripts" / "bf16_table.py"


def _write(run: Path, top1: list[float]) -> None:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_top1": t, "seconds": 12.0 + 2 * e}) + "\n"
                                               for e, t in enumerate(top1)))


def _table(out: Path) -> str:
    done = subprocess.run([sys.executable, str(TABLE), str(out)], capture_output=True, text=True, check=True)
    return done.stdout


def test_table_marks_differences_within_the_seed_spread(tmp_path: Path) -> None:
    _write(tmp_path / "ce_sgd_fp32_s0", [20.0, 30.0])
    _write(tmp_path / "ce_sgd_fp32_s1", [22.5, 30.5])
    _write(tmp_path / "ce_sgd_bf16cl_s0", [21.0, 31.0])  # epoch 1: 1.0 <= 2.5; epoch 2: 1.0 > 0.5
    _write(tmp_path / "ldam_drw_sam_fp32_s0", [10.0])
    lines = _table(tmp_path).splitlines()
    assert "| 1 | 20.00 | 22.50 | 21.00 | 2.50 | 1.00 | yes |" in lines
    assert "| 2 | 30.00 | 30.50 | 31.00 | 0.50 | 1.00 | no |" in lines
    assert "| s/epoch | 13 | 13 | 13 | | | |" in lines  # the mean of 12 and 14 s
    assert "| 1 | 10.00 | – | – | – | – | – |" in lines  # a method whose runs are not all there yet


@pytest.mark.skipif(os.environ.get("LTSAM_SCRIPT_TESTS") != "1", reason="six ltsam processes; LTSAM_SCRIPT_TESTS=1")
def test_script_end_to_end(tmp_path: Path) -> None:
    counts = [int(100 * 0.01 ** (c / 9)) for c in range(10)]
    data = make_image_folder(tmp_path / "imgs", counts, [4] * 10, size=32)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, DATA_ROOT=str(data), OUT=str(out), EPOCHS="2", CHUNK="1")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "bf16_check.sh")], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = (out / "table.md").read_text()
    for method in ("ce_sgd", "ldam_drw_sam"):
        assert f"### {method}" in table
    second = [line for line in table.splitlines() if line.startswith("| 2 | ")]  # both methods' epoch 2, complete
    assert len(second) == 2 and not any("–" in line for line in second)
    cfg = json.loads((out / "ldam_drw_sam_bf16cl_s0" / "config.json").read_text())
    assert (cfg["amp"], cfg["channels_last"], cfg["epochs"], cfg["compile"]) == ("bf16", True, 200, False)
