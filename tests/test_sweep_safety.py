"""`ltsam sweep` against hostile or careless input (issue 19): grid names and SLURM values that would inject
shell code, foreign sweep folders, a grid too large to expand, a dry run that must run no code of the grid's,
jobs that must not import the working folder's files, and runs that must die with their driver."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
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


def test_a_grid_at_the_cap_expands_and_one_run_more_is_refused(tmp_path: Path, monkeypatch) -> None:
    from ltsam.errors import UserError
    from ltsam.sweep import grid as grid_module

    monkeypatch.setattr(grid_module, "MAX_RUNS", 6)
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits}\nconfigs: {a: {}, b: {}}\nseeds: 3\n")
    assert len(load_sweep(grid).runs) == 6
    grid.write_text("base: {dataset: digits}\nconfigs: {a: {}, b: {}}\nseeds: [0, 1, 2, 5]\n")
    with pytest.raises(UserError, match="asks for 8 runs"):
        load_sweep(grid)


# ---------------------------------------------------------------- H: a dry run runs no code of the grid's
def test_dry_run_imports_no_plugin_and_lists_each_runs_settings(tmp_path: Path, capsys, monkeypatch) -> None:
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
        assert json.loads(lines[run.name].split("]  ", 1)[1]) == run.settings  # the settings, as data
    assert next(r for r in sweep.runs if r.name == "odd_seed0").settings["data_root"] == "a dir/with 'quotes'"


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


# ---------------------------------------------------------------- A: the sbatch script quotes what it writes
STUB_PYTHON = """#!/bin/bash
# A stand-in for python: the run-finished check says "not finished"; anything else records its argv.
if [[ $3 == */runs/* && $# == 3 ]]; then exit 1; fi
printf '%s\\0' "$@" > "$RECORD"
"""


@pytest.mark.parametrize("value", ["x y", "a\nb", "$(touch /tmp/X)", "with\"quote"])
def test_partition_and_slurm_arg_keys_must_be_plain_names(tmp_path: Path, capsys, value: str) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits}\nconfigs: {a: {}}\n")
    script = tmp_path / "job.sh"
    for flags in (["--partition", value], ["--slurm-arg", f"{value}=1"]):
        code, _, err = _sweep([str(grid), "--out", str(tmp_path / "sw"), "--emit-sbatch", str(script), *flags],
                              capsys)
        assert code == 2
        _one_error(err, "--partition" if flags[0] == "--partition" else "--slurm-arg")
        assert not script.exists() and not (tmp_path / "sw").exists()


def test_a_slurm_arg_value_with_a_line_break_is_refused(tmp_path: Path, capsys) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits}\nconfigs: {a: {}}\n")
    code, _, err = _sweep([str(grid), "--out", str(tmp_path / "sw"), "--emit-sbatch", str(tmp_path / "j.sh"),
                           "--slurm-arg", "comment=a\ntouch /tmp/X"], capsys)
    assert code == 2
    _one_error(err, "--slurm-arg comment", "line break")


def _sbatch_args(line: str) -> list[str]:
    """An #SBATCH line's arguments as sbatch reads them: whitespace splits, '...' or "..." group, a backslash
    escapes the next character, an unquoted # ends the line."""
    args, word, quote, escape, started = [], "", "", False, False
    for c in line[len("#SBATCH"):]:
        if escape:
            word, escape = word + c, False
        elif c == "\\":
            escape = started = True
        elif quote:
            if c == quote:
                quote = ""
            else:
                word += c
        elif c in "\"'":
            quote, started = c, True
        elif c == "#":
            break
        elif c.isspace():
            if started or word:
                args.append(word)
            word, started = "", False
        else:
            word += c
    assert not quote, line
    return args + ([word] if started or word else [])


def test_the_sbatch_script_quotes_paths_and_values_and_runs_no_injected_code(tmp_path: Path, capsys) -> None:
    from ltsam.launcher import ltsam_command
    from ltsam.sweep.launch import start_args

    marker = tmp_path / "INJECTED"
    grid = tmp_path / "g.yaml"
    grid.write_text("name: safe\nbase: {dataset: digits, epochs: 1}\nconfigs:\n"
                    f"  a: {{data-root: \"x$(touch {marker})`touch {marker}`; touch {marker}\"}}\n")
    out = tmp_path / "a sweep folder with 'quotes' #1"
    script = tmp_path / "job.sh"
    code, _, err = _sweep([str(grid), "--out", str(out), "--emit-sbatch", str(script),
                           "--slurm-arg", "comment=two words \"quoted\" # not a comment"], capsys)
    assert code == 0, err
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    directives = {a.partition("=")[0]: a.partition("=")[2] for ln in text.splitlines()
                  if ln.startswith("#SBATCH ") for a in _sbatch_args(ln)}
    assert directives["--output"] == f"{out.resolve()}/logs/%A_%a.out"  # the whole path, spaces and all
    assert directives["--comment"] == 'two words "quoted" # not a comment'
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    record = tmp_path / "argv"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, SLURM_ARRAY_TASK_ID="0", LTSAM_PYTHON=str(stub), RECORD=str(record)))
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    run = load_sweep(grid, out).runs[0]
    folder = str(out.resolve() / "runs" / run.name)
    settings = out.resolve() / "settings" / f"{run.name}.json"
    assert json.loads(settings.read_text()) == run.settings  # the run's settings, written beside the script
    expected = ltsam_command(start_args(folder, settings, run.plugins), str(stub))
    assert record.read_bytes().split(b"\0")[:-1] == [a.encode() for a in expected[1:]]  # the stub's own argv


# ---------------------------------------------------------------- the start and resume commands name the run's plugins
def test_a_started_or_resumed_run_is_given_its_own_plugin_flags(tmp_path: Path) -> None:
    from ltsam.sweep.launch import train_args

    settings, plugins = tmp_path / "run.json", ["my.plugin", "other"]
    # no last.pt: a fresh start from the settings file, with the plugins its settings name (issue 30)
    assert train_args(tmp_path, settings, plugins) == ["train", "--config", str(settings), "--plugin", "my.plugin",
                                                       "--plugin", "other", "--out", str(tmp_path), "--overwrite",
                                                       "--no-progress"]
    (tmp_path / "last.pt").write_bytes(b"")
    assert train_args(tmp_path, settings, plugins) == ["train", "--resume", str(tmp_path), "--plugin", "my.plugin",
                                                       "--plugin", "other", "--no-progress"]


# ---------------------------------------------------------------- C: the sweep folder
def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


@pytest.mark.parametrize("extra", [[], ["--emit-sbatch", "job.sh"], ["--dry-run"]])
def test_a_foreign_folder_is_refused_and_left_byte_for_byte(tmp_path: Path, capsys, monkeypatch,
                                                            extra: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\nconfigs: {a: {}}\n")
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"theirs": true}\n')
    (foreign / ".lock").write_text("12345\n")
    (foreign / "notes.txt").write_text("keep me")
    before = _snapshot(foreign)
    code, _, err = _sweep([str(grid), "--out", str(foreign), *extra], capsys)
    assert code == 2
    _one_error(err, str(foreign), "not an ltsam sweep folder")
    assert _snapshot(foreign) == before
    assert not (tmp_path / "job.sh").exists()


@pytest.mark.parametrize("out", [".", "..", "~"])
def test_the_working_folder_one_above_it_and_home_are_refused(tmp_path: Path, capsys, monkeypatch,
                                                              out: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    grid = work / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\nconfigs: {a: {}}\n")
    before = _snapshot(tmp_path)
    code, _, err = _sweep([str(grid), "--out", str(Path(out).expanduser()), "--emit-sbatch", "job.sh"], capsys)
    assert code == 2
    _one_error(err, "a sweep needs a folder of its own")
    assert _snapshot(tmp_path) == before


def test_a_sweep_folder_is_marked_and_a_running_sweep_refuses_a_second(tmp_path: Path, capsys) -> None:
    from ltsam.runs import RunLock

    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\nconfigs: {a: {}}\n")
    out = tmp_path / "sw"
    assert _sweep([str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / "j.sh")], capsys)[0] == 0
    assert (out / ".ltsam-sweep").read_text().startswith("ltsam-sweep-v1")
    held = RunLock(out)  # a running `ltsam sweep` holds the sweep folder's lock
    try:
        code, _, err = _sweep([str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / "j2.sh")], capsys)
    finally:
        held.release()
    assert code == 2
    _one_error(err, "another `ltsam sweep`", f"pid {os.getpid()}")
    assert not (tmp_path / "j2.sh").exists()


# ---------------------------------------------------------------- D: a stopped run is not a finished one
def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", OMP_NUM_THREADS="1")


def _rows(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


def test_a_stopped_after_run_is_resumed_by_the_sweep_and_finishes(tmp_path: Path, capsys) -> None:
    from ltsam.runs import run_finished

    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 3, batch-size: 64}\nconfigs: {a: {}}\n")
    out = tmp_path / "sw"
    assert _sweep([str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / "j.sh")], capsys)[0] == 0
    run = load_sweep(grid, out).runs[0]
    folder = out / "runs" / run.name
    settings = out / "settings" / f"{run.name}.json"
    assert main(["train", "--config", str(settings), "--out", str(folder), "--stop-after", "1", "--no-progress"]) == 0
    capsys.readouterr()
    final = json.loads((folder / "final.json").read_text())
    assert (final["epochs_done"], final["epochs"]) == (1, 3) and not run_finished(folder)
    first = _rows(folder)
    code, printed, err = _sweep([str(grid), "--out", str(out), "--executor", "debug"], capsys)
    assert code == 0, err
    assert "0 done (skipped), 1 interrupted (resumed from last.pt)" in printed
    assert run_finished(folder) and json.loads((folder / "final.json").read_text())["epochs_done"] == 3
    assert _rows(folder)[:1] == first  # resumed from its first epoch, not started again


def _sweep_with_first_folder(tmp_path: Path, capsys, text: str) -> tuple[Path, Path, Path]:
    """A grid file, its sweep folder (made and marked by ``--emit-sbatch``) and its first run's folder, made empty."""
    grid = tmp_path / "g.yaml"
    grid.write_text(text)
    out = tmp_path / "sw"
    assert _sweep([str(grid), "--out", str(out), "--emit-sbatch", str(tmp_path / "j.sh")], capsys)[0] == 0
    folder = out / "runs" / "a_seed0"
    folder.mkdir(parents=True)
    return grid, out, folder


# ---------------------------------------------------------------- G: a failed run says why
def test_a_failed_run_prints_the_trainings_error_line_then_the_log(tmp_path: Path, capsys) -> None:
    grid, out, folder = _sweep_with_first_folder(tmp_path, capsys, "base: {dataset: digits, epochs: 1, batch-size: 64}"
                                                 "\nconfigs: {a: {}}\n")
    (folder / "mine.txt").write_text("not ltsam's")  # `ltsam train --out` refuses the folder: exit 2
    code, printed, _ = _sweep([str(grid), "--out", str(out)], capsys)
    assert code == 3
    line = next(ln for ln in printed.splitlines() if "FAILED a_seed0" in ln)
    assert re.search(rf"FAILED a_seed0: ltsam: error: {re.escape(str(folder))} is not empty and is not an ltsam "
                     r"run folder .*; log \S+\.err$", line), line
    assert (folder / "mine.txt").read_text() == "not ltsam's"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"]["a_seed0"]["error"].startswith("ltsam: error: ")


# ---------------------------------------------------------------- B: no file of the working folder is imported
def _marker_module(folder: Path, name: str, marker: Path) -> None:
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n"
                                       f"raise ImportError('the working folder\\'s {name}.py')\n")


def test_sweep_jobs_do_not_import_the_working_folders_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "IMPORTED"
    _marker_module(work, "tqdm", marker)
    (work / "g.yaml").write_text("base: {dataset: digits, epochs: 1, batch-size: 64}\nconfigs: {a: {}}\n")
    ltsam = Path(sys.executable).parent / "ltsam"
    done = subprocess.run([str(ltsam), "sweep", "g.yaml", "--out", "sw", "--executor", "local"], cwd=work,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not marker.exists()
    from ltsam.runs import run_finished

    assert run_finished(work / "sw" / "runs" / "a_seed0")


def test_python_dash_m_ltsam_does_not_import_the_working_folders_files(tmp_path: Path) -> None:
    marker = tmp_path / "IMPORTED"
    _marker_module(tmp_path, "tqdm", marker)
    done = subprocess.run([sys.executable, "-m", "ltsam", "train", "--dataset", "digits", "--epochs", "1",
                           "--batch-size", "64", "--out", "run"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()
    assert json.loads((tmp_path / "run" / "final.json").read_text())["epochs_done"] == 1


def test_the_launcher_commands_drop_the_working_folder(tmp_path: Path) -> None:
    from ltsam.launcher import ltsam_command, without_working_folder

    marker = tmp_path / "IMPORTED"
    _marker_module(tmp_path, "yaml", marker)
    (tmp_path / "g.yaml").write_text("base: {dataset: digits}\nconfigs: {a: {}}\n")
    done = subprocess.run(ltsam_command(["sweep", "g.yaml", "--dry-run"]), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()  # the grid was read with the real yaml
    assert without_working_folder([str(tmp_path), "/lib"], str(tmp_path), False) == ["/lib"]
    assert without_working_folder(["", "/lib"], str(tmp_path), False) == ["/lib"]
    assert without_working_folder(["/lib", str(tmp_path)], str(tmp_path), False) == ["/lib", str(tmp_path)]
    assert without_working_folder([str(tmp_path), "/lib"], str(tmp_path), True) == [str(tmp_path), "/lib"]


# ---------------------------------------------------------------- E: jobs die with their driver
def _wait_for(test, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(every)
    return bool(test())


def test_killing_the_driver_stops_its_training_and_a_rerun_resumes_it(tmp_path: Path) -> None:
    from ltsam.runs import lock_holder, run_finished

    (tmp_path / "g.yaml").write_text("base: {dataset: digits, epochs: 20, batch-size: 64, threads: 1}\n"
                                     "configs: {a: {}}\n")
    ltsam = str(Path(sys.executable).parent / "ltsam")
    folder = tmp_path / "sw" / "runs" / "a_seed0"
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([ltsam, "sweep", "g.yaml", "--out", "sw"], cwd=tmp_path, env=_env(), stdout=log,
                              stderr=subprocess.STDOUT)
    trainer = None
    try:
        assert _wait_for(lambda: lock_holder(folder) and (folder / "last.pt").is_file(), 120), \
            (tmp_path / "driver.log").read_text()
        trainer = lock_holder(folder)
        assert trainer and trainer != driver.pid
        driver.kill()  # SIGKILL: no handler of the driver's runs
        driver.wait()
        assert _wait_for(lambda: lock_holder(folder) is None, 20), f"pid {trainer} still trains {folder}"
        trainer = None
    finally:
        if driver.poll() is None:
            driver.kill()
        if trainer:  # the training this test started, left behind by a failure
            with contextlib.suppress(ProcessLookupError):
                os.kill(trainer, signal.SIGKILL)
        log.close()
    assert not run_finished(folder)
    before = _rows(folder)
    assert 1 <= len(before) < 20
    rerun = subprocess.run([ltsam, "sweep", "g.yaml", "--out", "sw"], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "1 interrupted (resumed from last.pt)" in rerun.stdout and "resuming a_seed0" in rerun.stdout
    assert run_finished(folder)
    assert _rows(folder)[:len(before)] == before and len(_rows(folder)) == 20  # resumed, not started again


def test_a_run_folder_still_trained_by_another_process_is_waited_for(tmp_path: Path, capsys) -> None:
    from ltsam.runs import RunLock, run_finished

    grid, out, folder = _sweep_with_first_folder(
        tmp_path, capsys, "base: {dataset: digits, epochs: 1, batch-size: 64, threads: 1}\nconfigs: {a: {}}\n"
                          "seeds: 2\n")
    held = RunLock(folder)  # as an orphaned training of an earlier sweep holds it
    seen = {}

    def release() -> None:
        time.sleep(4)
        seen["other started"] = (out / "runs" / "a_seed1").exists()
        held.release()

    thread = threading.Thread(target=release)
    thread.start()
    try:
        code, printed, err = _sweep([str(grid), "--out", str(out), "--parallel", "1"], capsys)
    finally:
        thread.join()
    assert code == 0, printed + err
    waits = [ln for ln in printed.splitlines() if "waiting for" in ln]
    assert len(waits) == 1 and f"waiting for a_seed0, still trained by pid {os.getpid()}" in waits[0]
    assert seen["other started"] is False  # the busy folder takes the one slot of --parallel 1
    assert run_finished(folder) and run_finished(out / "runs" / "a_seed1")


def test_the_torchrun_command_starts_workers_that_import_nothing_from_the_working_folder(tmp_path: Path) -> None:
    from ltsam.launcher import torchrun_command

    marker = tmp_path / "IMPORTED"
    _marker_module(tmp_path, "tqdm", marker)
    cmd = torchrun_command(["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--out", "run"], 2)
    assert "--no-python" in cmd and "-m" not in cmd
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()
    assert json.loads((tmp_path / "run" / "final.json").read_text())["epochs_done"] == 1


def test_the_sbatch_scripts_resume_line_names_the_runs_plugins(tmp_path: Path, capsys, monkeypatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "harmless_plugin.py").write_text("")
    monkeypatch.syspath_prepend(str(plugins))
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, epochs: 1}\nconfigs: {a: {plugin: harmless_plugin}}\n")
    script = tmp_path / "job.sh"
    assert _sweep([str(grid), "--out", str(tmp_path / "sw"), "--emit-sbatch", str(script)], capsys)[0] == 0
    resume = next(ln for ln in script.read_text().splitlines() if ln.strip().startswith("resume=("))
    folder = str((tmp_path / "sw" / "runs" / "a_seed0").resolve())
    assert shlex.split(resume.split("resume=(", 1)[1].rstrip(")")) == [
        "train", "--resume", folder, "--plugin", "harmless_plugin", "--no-progress"]
