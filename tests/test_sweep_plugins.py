"""`ltsam sweep` with a plugin loss (issue 30, defect 6): every launch path (a fresh local job, a resumed one, a
pack's job, an sbatch array task) names the grid's plugins on its command line, and a re-run skips the finished
runs; ``ltsam train --config FILE`` uses the plugins the file names only when the command line names them too.
And a refused sweep leaves no sweep folder behind (defect 9)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ltsam.cli import main
from ltsam.sweep.grid import load_sweep

ROOT = Path(__file__).resolve().parents[1]
# A user's module registering a loss ltsam does not ship.
PLUGIN = '''
import torch.nn.functional as F
from torch import nn

from ltsam.losses import LOSSES


@LOSSES.register("{loss}", help="cross-entropy with label smoothing 0.1")
class SmoothCE(nn.Module):
    def __init__(self, cls_num_list, weight=None):
        super().__init__()

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=0.1)
'''
BASE = "base: {dataset: digits, epochs: 2, batch-size: 64, train-rule: none}\n"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch, request) -> Iterator[tuple[str, str]]:
    """(module, loss): a plugin module of a name of this test's own, importable here and in every child."""
    tag = request.node.name.split("[")[0][-24:].replace("-", "_")
    module, loss = f"plug_{tag}", f"smooth_{tag}"
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{module}.py").write_text(PLUGIN.format(loss=loss))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT / "src"), str(ROOT)]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield module, loss
    from ltsam.losses import LOSSES

    if loss in LOSSES.names():  # imported here by a sweep or a --plugin: no other test sees the loss
        LOSSES.remove(loss)
    sys.modules.pop(module, None)


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _trained_with(run: Path, module: str, loss: str) -> None:
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["plugins"] == [module] and cfg["loss"] == loss, cfg
    assert json.loads((run / "final.json").read_text())["epochs_done"] == 2


def test_a_local_sweep_starts_resumes_and_skips_runs_of_a_plugin_loss(tmp_path: Path, capsys, plugin) -> None:
    module, loss = plugin
    grid = tmp_path / "g.yaml"
    grid.write_text(BASE + f"configs:\n  sm: {{plugin: {module}, loss: {loss}}}\nseeds: [0, 1]\n")
    out = tmp_path / "sw"
    code, printed, err = _run(["sweep", str(grid), "--out", str(out)], capsys)
    assert code == 0 and "2 of 2 runs finished" in printed, printed + err  # before: unknown --loss, both FAILED
    for seed in (0, 1):
        _trained_with(out / "runs" / f"sm_seed{seed}", module, loss)
    # seed 1 interrupted after its last epoch (no final.json): the re-run resumes it with --plugin, skips seed 0
    (out / "runs" / "sm_seed1" / "final.json").unlink()
    code, printed, err = _run(["sweep", str(grid), "--out", str(out)], capsys)
    assert code == 0 and "1 done (skipped), 1 interrupted" in printed and "1 of 1 runs finished" in printed, \
        printed + err
    _trained_with(out / "runs" / "sm_seed1", module, loss)
    code, printed, err = _run(["sweep", str(grid), "--out", str(out)], capsys)
    assert code == 0 and "2 done (skipped)" in printed and "nothing to run" in printed, printed + err


def test_the_sbatch_scripts_fresh_line_names_the_runs_plugins_and_trains(tmp_path: Path, capsys, plugin) -> None:
    module, loss = plugin
    grid = tmp_path / "g.yaml"
    grid.write_text(BASE + f"configs:\n  sm: {{plugin: {module}, loss: {loss}}}\n")
    script, out = tmp_path / "job.sh", tmp_path / "sw"
    assert _run(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(script)], capsys)[0] == 0
    fresh = next(ln for ln in script.read_text().splitlines() if ln.strip().startswith("0) fresh=("))
    assert shlex.split(fresh.split("fresh=(", 1)[1].rstrip(")"))[3:5] == ["--plugin", module]
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SLURM_ARRAY_TASK_ID="0"))
    assert done.returncode == 0, done.stderr[-2000:]
    _trained_with(out / "runs" / "sm_seed0", module, loss)


def test_a_packs_job_names_every_members_plugins_and_the_runs_folder(tmp_path: Path, capsys, plugin) -> None:
    """A pack of a built-in loss and a plugin loss: its job names the plugin even though its first member does
    not, and gives ``--out`` the sweep's runs/ folder (``ltsam train --members`` requires it)."""
    from ltsam.sweep.launch import job_args
    from ltsam.sweep.state import job_file, run_dir

    module, loss = plugin
    grid = tmp_path / "g.yaml"
    grid.write_text(BASE + f"configs:\n  ce: {{loss: ce}}\n  sm: {{plugin: {module}, loss: {loss}}}\npack: 2\n")
    out = tmp_path / "sw"
    sweep = load_sweep(grid, out)
    (job,) = sweep.jobs
    assert job.packed and job.plugins == [module]
    args = job_args([run_dir(sweep, r) for r in job.runs], job_file(sweep, job), job.plugins)
    assert args == ["train", "--members", str(job_file(sweep, job)), "--out", str(out.absolute() / "runs"),
                    "--plugin", module, "--no-progress"]
    script = tmp_path / "job.sh"
    assert _run(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(script)], capsys)[0] == 0
    fresh = next(ln for ln in script.read_text().splitlines() if ln.strip().startswith("0) fresh=("))
    assert shlex.split(fresh.split("fresh=(", 1)[1].rstrip(")")) == [
        "train", "--members", str(job_file(sweep, job).resolve()), "--out", str((out / "runs").resolve()),
        "--plugin", module, "--no-progress"]
    # end to end (needs `ltsam train --members FILE --out DIR`): the pack trains both, a re-run skips them
    code, printed, err = _run(["sweep", str(grid), "--out", str(out)], capsys)
    assert code == 0 and "2 of 2 runs finished" in printed, printed + err
    _trained_with(out / "runs" / "sm_seed0", module, loss)
    code, printed, err = _run(["sweep", str(grid), "--out", str(out)], capsys)
    assert code == 0 and "2 done (skipped)" in printed, printed + err


def test_a_settings_files_plugin_is_used_only_when_the_command_line_names_it(tmp_path: Path, capsys,
                                                                             plugin) -> None:
    module, loss = plugin
    settings = tmp_path / "run.yaml"
    settings.write_text(f"dataset: digits\nepochs: 1\nbatch-size: 64\ntrain-rule: none\nplugin: {module}\n"
                        f"loss: {loss}\n")
    out = tmp_path / "run"
    code, _, err = _run(["train", "--config", str(settings), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"names plugin(s) {module}" in err and f"add --plugin {module}" in err, err
    assert module not in sys.modules  # the file imported nothing
    assert not out.exists()
    code, _, err = _run(["train", "--config", str(settings), "--plugin", module, "--out", str(out),
                         "--no-progress"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["plugins"] == [module] and cfg["loss"] == loss


# ---------------------------------------------------------------- defect 9: a refused sweep makes no folder
@pytest.mark.parametrize("where", ["missing/job.sh", "."])
def test_emit_sbatch_to_a_bad_path_leaves_no_sweep_folder(tmp_path: Path, capsys, where: str) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\nconfigs: {a: {}}\n")
    out = tmp_path / "sw"
    code, _, err = _run(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / where)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--emit-sbatch" in err, err
    assert not out.exists()  # the corrected command is not refused for a folder the refused one left
    code, _, err = _run(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / "job.sh")], capsys)
    assert code == 0, err


def test_a_sweep_whose_executor_cannot_run_here_leaves_no_sweep_folder(tmp_path: Path, capsys,
                                                                       monkeypatch) -> None:
    import torch

    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\nconfigs: {a: {}}\n")
    out = tmp_path / "sw"
    too_many = str(torch.cuda.device_count() + 1)
    code, _, err = _run(["sweep", str(grid), "--out", str(out), "--gpus-per-run", too_many], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "GPU(s)" in err, err
    assert not out.exists()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no srun
    code, _, err = _run(["sweep", str(grid), "--out", str(out), "--executor", "slurm"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "srun" in err, err
    assert not out.exists()


OPTION_PLUGIN = '''
import torch.nn.functional as F
from torch import nn

from ltsam.losses import LOSSES
from ltsam.registry import Option


@LOSSES.register("{loss}", help="cross-entropy with label smoothing", options=[Option("{option}", float, 0.1)])
class SmoothCE(nn.Module):
    def __init__(self, cls_num_list, weight=None, {option}=0.1):
        super().__init__()
        self.eps = {option}

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=self.eps)
'''


def test_a_grid_sets_a_plugin_losss_own_option(tmp_path: Path, capsys, plugin) -> None:
    """The grid's plugins are imported before its keys are read, so a plugin's option is a key of the grid (a dry
    run, which imports nothing, says so)."""
    from ltsam.extensions import all_options

    module, loss = plugin
    option = f"eps_{module}"
    (tmp_path / "plugins" / f"{module}.py").write_text(OPTION_PLUGIN.format(loss=loss, option=option))
    grid = tmp_path / "g.yaml"
    grid.write_text(BASE + f"configs:\n  sm: {{plugin: {module}, loss: {loss}}}\n"
                    f"grid: {{{option.replace('_', '-')}: [0.2]}}\n")
    out = tmp_path / "sw"
    code, _, err = _run(["sweep", str(grid), "--out", str(out), "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run without --dry-run" in err, err
    assert module not in sys.modules
    try:
        code, printed, err = _run(["sweep", str(grid), "--out", str(out)], capsys)
        assert code == 0 and "1 of 1 runs finished" in printed, printed + err
        (folder,) = (out / "runs").iterdir()
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["loss"] == loss and cfg[option] == 0.2
    finally:
        from ltsam.losses import LOSSES

        if loss in LOSSES.names():
            LOSSES.remove(loss)
        assert option not in all_options()
