"""`ltsam sweep` against hostile or careless input (issue 19): grid names and SLURM values that would inject
shell code, foreign sweep folders, a grid too large to expand, a dry run that must run no code of the grid's,
jobs that must not import the working folder's files, and runs that must die with their driver."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ltsam.cli import main
from ltsam.sweep.grid import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def _sweep(args: list[str], capsys) -> tuple[int, str, str]:
    """``ltsam sweep ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["sweep", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltsam: error: "), err
    for word in words:
        assert word in lines[0], lines[0]


# ---------------------------------------------------------------- F: the size of a grid
def test_a_grid_of_a_trillion_seeds_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits}\nconfigs: {a: {}, b: {}}\ngrid: {lr: [0.1, 0.2]}\n"
                    "seeds: 1000000000000\n")
    code, _, err = _sweep([str(grid), "--out", str(tmp_path / "sw"), "--dry-run"], capsys)
    assert code == 2
    _one_error(err, "4,000,000,000,000 runs", "at most 10,000")


def test_a_grid_of_exactly_the_cap_expands(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits}\nconfigs: {a: {}}\nseeds: 10000\n")
    assert len(load_sweep(grid).runs) == 10_000


# ---------------------------------------------------------------- H: a dry run runs no code of the grid's
def test_dry_run_imports_no_plugin_and_lists_shell_quoted_commands(tmp_path: Path, capsys, monkeypatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    marker = tmp_path / "imported"
    (plugins / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(plugins))
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\n"
                    "configs:\n  plain: {}\n  odd: {val-per-class: 2, data-root: \"a dir/with 'quotes'\"}\n"
                    "  plugged: {plugin: evil_plugin}\n")
    code, out, err = _sweep([str(grid), "--out", str(tmp_path / "sw"), "--dry-run"], capsys)
    assert code == 0, err
    assert not marker.exists()  # the plugin was never imported
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing
    sweep = load_sweep(grid, tmp_path / "sw", run_plugins=False)
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "[not checked: names plugin(s) evil_plugin]" in lines["plugged_seed0"]
    assert "not checked" not in lines["plain_seed0"]
    for run in sweep.runs:
        command = lines[run.name].split("]  ", 1)[1]
        assert shlex.split(command) == ["ltsam", "train", *run.argv]
    assert "a dir/with 'quotes'" in next(r for r in sweep.runs if r.name == "odd_seed0").argv


# ---------------------------------------------------------------- A: the sweep's name
@pytest.mark.parametrize("name", ["n1\\ntouch /tmp/X\\n#", "../..", "/abs/path", "a b", "-x", "a..b", "$(id)"])
def test_an_unsafe_sweep_name_is_refused_in_one_line(tmp_path: Path, capsys, name: str) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(f'name: "{name}"\nbase: {{dataset: digits}}\nconfigs: {{a: {{}}}}\n')
    script = tmp_path / "job.sh"
    code, _, err = _sweep([str(grid), "--emit-sbatch", str(script)], capsys)
    assert code == 2
    _one_error(err, "sweep name", "set `name:`")
    assert not script.exists() and not (tmp_path / "runs").exists()
