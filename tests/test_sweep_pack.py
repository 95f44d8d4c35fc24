"""``ltsam sweep --pack N`` (or ``pack:``): compatible runs train as packs of at most N, one job each, every
member into its own ordinary run folder, exactly as it trains alone; ``ltsam train --members FILE`` is the job."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from ltsam.sweep.grid import load_sweep

GRID = """base: {dataset: digits, epochs: 2, batch-size: 64}
configs:
  ce: {loss: ce}
  focal: {loss: focal, rho: 0.1}
  cnn8: {loss: ce, epochs: 3}
  glmc: {method: glmc}
seeds: 2
"""


def _grid(tmp_path: Path, extra: str = "") -> Path:
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID + extra)
    return grid


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_compatible_runs_are_grouped_into_packs_of_at_most_n(tmp_path: Path) -> None:
    grid = _grid(tmp_path, "pack: 3\n")
    jobs = [[r.name for r in j.runs] for j in load_sweep(grid).jobs]
    # ce and focal differ only in what members may differ in (loss, rho): one group of 4, cut at 3;
    # cnn8 trains 3 epochs (a pack shares its schedule): its own pack; GLMC does not pack: each alone
    assert jobs == [["ce_seed0", "ce_seed1", "focal_seed0"], ["focal_seed1"], ["cnn8_seed0", "cnn8_seed1"],
                    ["glmc_seed0"], ["glmc_seed1"]]
    assert [j.name for j in load_sweep(grid).jobs][:3] == ["pack1", "focal_seed1", "pack3"]
    assert all(len(j.runs) == 1 for j in load_sweep(grid, pack=1).jobs)  # --pack overrides the grid
    assert [len(j.runs) for j in load_sweep(grid, pack=8).jobs] == [4, 2, 1, 1]


@pytest.mark.parametrize("value", ["0", "-2", "two", "true", "1.5"])
def test_a_bad_pack_size_is_one_line(tmp_path: Path, capsys, value: str) -> None:
    grid = _grid(tmp_path, f"pack: {value}\n")
    code, _, err = _run(["sweep", str(grid), "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pack must be a whole number" in err, err


def test_dry_run_shows_the_grouping(tmp_path: Path, capsys) -> None:
    grid = _grid(tmp_path)
    code, out, err = _run(["sweep", str(grid), "--out", str(tmp_path / "sw"), "--dry-run", "--pack", "4"], capsys)
    assert code == 0, err
    assert "4 jobs: 2 pack(s) of at most 4 runs, 2 run(s) alone" in out
    assert re.search(r"^  pack1: 4 runs as one pack\n(    (ce|focal)_seed[01]  .*\n){4}  pack2: 2 runs", out, re.M)
    assert not (tmp_path / "sw").exists()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=False)["model"]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_packed_sweep_trains_every_member_as_its_run_alone_and_resumes_each(tmp_path: Path, capsys) -> None:
    """Two runs packed (loop mode on the CPU: exact): each member's records and weights equal its run alone, bit
    for bit. One member stopped after its first epoch and the other never started: the pack's job resumes the
    first and starts the second, and both still equal their runs alone."""
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 2, batch-size: 64}\nconfigs:\n  ce: {loss: ce}\n"
                    "  focal: {loss: focal, rho: 0.1}\nseeds: [3]\npack: 2\n")
    out = tmp_path / "sw"
    sweep = load_sweep(grid, out)
    assert [len(j.runs) for j in sweep.jobs] == [2]
    # the runs alone, from the settings the sweep hands them
    assert _run(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / "j.sh")], capsys)[0] == 0
    alone = {}
    for run in sweep.runs:
        settings = out / "settings" / f"{run.name}.json"
        alone[run.name] = tmp_path / "alone" / run.name
        assert main(["train", "--config", str(settings), "--out", str(alone[run.name]), "--no-progress"]) == 0
    first = sweep.runs[0]
    assert main(["train", "--config", str(out / "settings" / f"{first.name}.json"), "--out",
                 str(out / "runs" / first.name), "--stop-after", "1", "--no-progress"]) == 0
    capsys.readouterr()
    code, printed, err = _run(["sweep", str(grid), "--out", str(out), "--executor", "debug"], capsys)
    assert code == 0, err
    assert "1 interrupted (resumed from last.pt), 1 to start" in printed
    assert "resuming pack1 (2 runs as one pack: ce_seed3, focal_seed3)" in printed
    for run in sweep.runs:
        folder = out / "runs" / run.name
        assert _rows(folder) == _rows(alone[run.name]), run.name
        mine, theirs = _weights(folder), _weights(alone[run.name])
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), run.name
        saved = json.loads((folder / "config.json").read_text())
        assert saved["pack"] is None or saved["pack"]["size"] == 2  # the one resumed kept its own start
    started = json.loads((out / "runs" / sweep.runs[1].name / "config.json").read_text())
    assert started["pack"]["members"] == [str(out.absolute() / "runs" / r.name) for r in sweep.runs]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["state"] for e in manifest["runs"].values()} == {"done"}
    code, printed, _ = _run(["sweep", str(grid), "--out", str(out), "--executor", "debug"], capsys)
    assert code == 0 and "2 done (skipped)" in printed


def test_the_sbatch_script_has_one_array_task_per_job(tmp_path: Path, capsys) -> None:
    grid = _grid(tmp_path, "pack: 4\n")
    script, out = tmp_path / "j.sh", tmp_path / "sw"
    assert _run(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(script)], capsys)[0] == 0
    text = script.read_text()
    assert "#SBATCH --array=0-3%4" in text
    cases = re.findall(r"^    (\d+)\) fresh=\((.*)\)$", text, re.M)
    assert [int(k) for k, _ in cases] == [0, 1, 2, 3]
    assert cases[0][1].split()[:3] == ["train", "--members", str((out / "packs" / "pack1.json").resolve())]
    members = json.loads((out / "packs" / "pack1.json").read_text())["members"]
    assert [Path(m["out"]).name for m in members] == ["ce_seed0", "ce_seed1", "focal_seed0", "focal_seed1"]
    assert "--config" in cases[2][1]  # GLMC alone: its settings file


def test_pack_with_several_gpus_per_run_is_refused(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["sweep", str(_grid(tmp_path)), "--pack", "2", "--gpus-per-run", "2", "--dry-run"], capsys)
    assert code == 2 and "one process on one GPU" in err


@pytest.mark.parametrize("body, words", [
    ("[1, 2]", "must hold"),
    ('{"members": [{"config": "a.json"}]}', "must hold"),
])
def test_a_bad_members_file_is_one_line(tmp_path: Path, capsys, body: str, words: str) -> None:
    (tmp_path / "m.json").write_text(body)
    out = ["--out", str(tmp_path / "sw")]
    code, _, err = _run(["train", "--members", str(tmp_path / "m.json"), *out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    code, _, err = _run(["train", "--members", str(tmp_path / "m.json"), *out, "--lr", "0.1"], capsys)
    assert code == 2 and "leave out --lr" in err
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--members", str(tmp_path / "none.json"), *out]) == 2
    assert not (tmp_path / "sw").exists()
