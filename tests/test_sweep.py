"""`ltsam sweep`: grid expansion and checks (a bad grid starts nothing), submitit's local executor running
3 digits runs 2 at a time, skipping finished runs, resuming a killed run bit for bit, the plain sbatch
script, and submitit's SLURM executor against fake `sbatch`/`srun`/`sacct` commands."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import math
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from ltsam.sweep.grid import load_sweep
from tests.tolerances import rtol

ROOT = Path(__file__).resolve().parents[1]
# Three seeds of one small digits configuration, with a validation split.
GRID = """name: tiny
base: {dataset: digits, epochs: 4, batch-size: 64, val-per-class: 4}
configs:
  sam: {}
seeds: 3
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", OMP_NUM_THREADS="1")


def _sweep(args: list[str]) -> tuple[int, str]:
    """``ltsam sweep ARGS`` in this process (its jobs are processes of their own): (exit code, stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["sweep", *args])
    return code, buf.getvalue()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path, str]:
    """(grid file, sweep folder, what the sweep printed): 3 runs through the local executor, 2 at once."""
    base = tmp_path_factory.mktemp("sweep")
    grid = base / "tiny.yaml"
    grid.write_text(GRID)
    out = base / "sw"
    code, text = _sweep([str(grid), "--out", str(out), "--parallel", "2"])
    assert code == 0, text[-3000:]
    return grid, out, text


# ---------------------------------------------------------------- the grid
def test_grid_expands_layers_axes_and_seeds(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(f"""
base: {{dataset: digits, epochs: 5, --imb_factor: 0.2, data-root: {tmp_path}}}
configs:
  sam: {{lr: 0.02}}
  sgd: {{optimizer: sgd, epochs: 4}}
grid: {{wd: [0.001, 0.002]}}
seeds: [3, 7]
recipes: [cifar10-lt-ce]
""")
    sweep = load_sweep(grid)
    assert sweep.name == "g" and sweep.out == Path("runs/sweeps/g")
    names = [r.name for r in sweep.runs]
    # recipes come first, then the configs; per config every grid point, per point every seed
    assert names == [f"{c}_wd{w}_seed{s}" for c in ("cifar10-lt-ce", "sam", "sgd")
                     for w in ("0.001", "0.002") for s in (3, 7)]
    by = {r.name: r for r in sweep.runs}
    r = by["sgd_wd0.002_seed7"].resolved
    # base, then the config (epochs 4 wins over 5), then the grid point, then the seed
    assert (r["dataset"], r["epochs"], r["imb_factor"], r["optimizer"], r["wd"], r["seed"]) == \
        ("digits", 4, 0.2, "sgd", 0.002, 7)
    assert by["sam_wd0.001_seed3"].resolved["lr"] == 0.02
    c = by["cifar10-lt-ce_wd0.001_seed3"].resolved
    # the recipe's values under the base's (later layers win): dataset digits, epochs 5
    assert (c["recipe"], c["loss"], c["optimizer"], c["dataset"], c["epochs"]) == \
        ("cifar10-lt-ce", "ce", "sgd", "digits", 5)
    # each run's settings are data: canonical keys, typed values, the layers merged
    settings = dict(by["sgd_wd0.002_seed7"].settings)
    assert settings.pop("data_root") and settings == {"dataset": "digits", "epochs": 4, "imb_factor": 0.2,
                                                      "optimizer": "sgd", "wd": 0.002, "seed": 7}
    assert by["cifar10-lt-ce_wd0.001_seed3"].settings["recipe"] == "cifar10-lt-ce"
    assert len({r.config_hash for r in sweep.runs}) == len(sweep.runs)


@pytest.mark.parametrize("body, words", [
    ("configs: {a: {rho: -1}}", ["run a_seed0", "--rho", "non-negative"]),
    ("configs: {a: {loss: nosuch}}", ["run a_seed0", "--loss", "nosuch"]),
    ("configs: {a: {colour: red}}", ["config a", "'colour' is not an `ltsam train` setting"]),
    ("configs: {a: {}}\ngrid: {epochs: [2, 0]}", ["run a_epochs0_seed0", "--epochs"]),
    ("configs: {a: {out: x}}", ["'out' is set by the sweep"]),
    ("recipes: [nosuch-recipe]", ["run nosuch-recipe_seed0", "unknown recipe"]),
    ("configs: {a: {dataset: folder, data-root: /nonexistent/imgs}}", ["run a_seed0", "/nonexistent/imgs"]),
    ("configs: {a: {}}\nseeds: [1, 1]", ["repeat a seed"]),
    ("configs: {a: {}}\nrepeats: 3", ["unknown top-level key", "repeats"]),
    ("configs: {a: {}", ["not valid YAML"]),
    ("seeds: 2", ["no runs"]),
])
def test_a_bad_grid_exits_2_naming_the_entry_and_starts_nothing(tmp_path: Path, capsys, body: str,
                                                                words: list[str]) -> None:
    grid = tmp_path / "bad.yaml"
    grid.write_text("base: {dataset: digits, epochs: 2}\n" + body + "\n")
    out = tmp_path / "sw"
    assert main(["sweep", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ltsam: error:"), err
    for w in words:
        assert w in err, err
    assert not out.exists()  # nothing started, not even the sweep folder


# ---------------------------------------------------------------- the local executor
def _job_spans(logs: Path) -> list[tuple[dt.datetime, dt.datetime]]:
    """(start, end) of every job, from submitit's own log lines."""
    stamp = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\)")
    spans = []
    for log in sorted(logs.glob("*_log.out")):
        times = [dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                 for line in log.read_text().splitlines() if (m := stamp.search(line))
                 and ("Starting with JobEnvironment" in line or "Exiting after successful completion" in line)]
        spans.append((times[0], times[-1]))
    return spans


def test_local_executor_runs_three_runs_two_at_a_time(swept) -> None:
    grid, out, printed = swept
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["sam_seed0", "sam_seed1", "sam_seed2"]
    for name in runs:
        final = json.loads((out / "runs" / name / "final.json").read_text())
        assert final["epochs_done"] == 4 and final["best_val"] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert {n: e["state"] for n, e in manifest["runs"].items()} == {n: "done" for n in runs}
    for name, entry in manifest["runs"].items():
        saved = json.loads((out / "runs" / name / "config.json").read_text())
        assert entry["seed"] == saved["seed"] and entry["settings"]["seed"] == saved["seed"]
    spans = sorted(_job_spans(out / "logs"))
    assert len(spans) == 3
    # never more than two at once; the first two overlapped; the third began after one of them ended
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once == 2
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    assert "3 of 3 runs finished" in printed


def test_a_finished_sweep_is_skipped(swept) -> None:
    grid, out, _ = swept
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    logs = sorted((out / "logs").iterdir())
    code, printed = _sweep([str(grid), "--out", str(out), "--parallel", "2"])
    assert code == 0
    assert "3 done (skipped)" in printed and "nothing to run" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == before
    assert sorted((out / "logs").iterdir()) == logs  # no job was started


def test_a_changed_grid_is_refused_before_anything_starts(swept, tmp_path: Path, capsys) -> None:
    grid, out, _ = swept
    changed = tmp_path / "tiny.yaml"
    changed.write_text(GRID.replace("epochs: 4", "epochs: 5"))
    assert main(["sweep", str(changed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run sam_seed0" in err and "epochs: 4 -> 5" in err


def test_a_killed_run_resumes_on_rerun_and_ends_bitwise_equal(swept, tmp_path: Path) -> None:
    """The sweep (and its job) killed with SIGKILL after an epoch; running the sweep again resumes the run
    from last.pt, and it ends with the weights and numbers of the uninterrupted run of the same config."""
    _, reference, _ = swept
    grid = tmp_path / "one.yaml"
    grid.write_text(GRID.replace("seeds: 3", "seeds: [1]"))
    out = tmp_path / "sw"
    run = out / "runs" / "sam_seed1"
    cmd = [sys.executable, "-m", "ltsam", "sweep", str(grid), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((run / "last.pt").is_file() and (run / "metrics.jsonl").is_file()):
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before its first epoch"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its job controller and the training process
        proc.wait()
    assert not (run / "final.json").exists(), "the run finished before it was killed"
    done_before = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done_before < 4
    code, printed = _sweep([str(grid), "--out", str(out)])
    assert code == 0, printed[-2000:]
    assert "1 interrupted (resumed from last.pt)" in printed and "resuming sam_seed1" in printed
    resumed_log = max((out / "logs").glob("*_log.out"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert f"epoch {done_before + 1:>3}/4" in resumed_log and "epoch   1/4" not in resumed_log
    ref = reference / "runs" / "sam_seed1"
    wa, wb = _weights(ref / "last.pt"), _weights(run / "last.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(ref)]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(run)] == strip
    fa, fb = (json.loads((p / "final.json").read_text()) for p in (ref, run))
    assert fa["final"] == fb["final"] and fa["best_val"] == fb["best_val"]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    kids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat_file.parent.name))
    return kids


def test_a_preempted_job_is_requeued_by_submitit_and_resumes(swept, tmp_path: Path) -> None:
    """Pre-emption as SLURM signals it (SIGUSR2 to the job): submitit calls TrainJob.checkpoint and requeues
    the job; the requeued job resumes from last.pt and ends bit for bit as the uninterrupted run."""
    import submitit

    from ltsam.sweep.launch import TrainJob

    grid, reference, _ = swept
    (spec,) = [r for r in load_sweep(grid).runs if r.seed == 2]
    run = tmp_path / "runs" / spec.name
    executor = submitit.LocalExecutor(folder=tmp_path / "logs", max_num_timeout=3)
    executor.update_parameters(timeout_min=60)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(spec.settings))
    job = executor.submit(TrainJob(), [str(run)], str(settings), spec.plugins, 0)
    deadline = time.time() + 300
    while not (run / "last.pt").is_file():
        assert not job.done() and time.time() < deadline, "the job ended before its first epoch"
        time.sleep(0.02)
    (task,) = _children(int(job.job_id))  # the job's process under submitit's controller
    os.kill(task, signal.SIGUSR2)
    assert job.result() == "done"
    log = job.stdout()
    assert "this job is preempted" in log and "Requeued job" in log
    first, second = log.split("Requeued job")
    assert "Starting with JobEnvironment" in second  # submitit started the job again
    assert "epoch   4/4" in second and "epoch   1/4" not in second  # and it resumed after epoch 1 or later
    ref = reference / "runs" / spec.name
    wa, wb = _weights(ref / "last.pt"), _weights(run / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["test_top1"] for r in _rows(run)] == [r["test_top1"] for r in _rows(ref)]


# ---------------------------------------------------------------- SLURM
def test_emit_sbatch_writes_one_array_line_per_run(swept, tmp_path: Path) -> None:
    grid, out, _ = swept
    script = tmp_path / "tiny.sbatch"
    assert main(["sweep", str(grid), "--out", str(out), "--emit-sbatch", str(script), "--partition", "gpu",
                 "--gpus-per-run", "1", "--array-parallelism", "2", "--timeout-min", "90",
                 "--slurm-arg", "account=proj"]) == 0
    text = script.read_text()
    lines = [ln for ln in text.splitlines() if re.match(r"\s+\d+\) fresh=\(", ln)]
    assert len(lines) == 3
    for k, name in enumerate(["sam_seed0", "sam_seed1", "sam_seed2"]):
        fresh = shlex.split(lines[k].split("fresh=(", 1)[1].rstrip(")"))
        settings = (out / "settings" / f"{name}.json").resolve()
        assert fresh[:3] == ["train", "--config", str(settings)] and json.loads(settings.read_text())["seed"] == k
        assert fresh[-4:] == ["--out", str((out / "runs" / name).resolve()), "--overwrite", "--no-progress"]
    for directive in ("--array=0-2%2", "--partition=gpu", "--gpus-per-node=1", "--time=90", "--requeue",
                      "--account=proj"):
        assert f"#SBATCH {directive}" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Array task 1 of a finished sweep: the run is done, so the task skips it.
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=dict(
        _env(), SLURM_ARRAY_TASK_ID="1"), timeout=60)
    assert done.returncode == 0 and "sam_seed1 is done" in done.stdout
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                             env=dict(_env(), SLURM_ARRAY_TASK_ID="5"), timeout=60)
    assert missing.returncode == 2 and "no run 5" in missing.stderr


def _fake_slurm(bin_dir: Path, record: Path, sacct_states: Path) -> None:
    """`sbatch` that keeps the script it is given and answers with job id 4242; `srun` that runs its
    command; `sacct` that prints the states in ``sacct_states``."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": (f'#!/bin/bash\ncp "${{@: -1}}" "{record}/$(ls {record} | wc -l).sh"\n'
                   'echo "Submitted batch job 4242"\n'),
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; [[ "$1" != --* ]] && shift; done\nexec "$@"\n',
        "sacct": f'#!/bin/bash\necho "JobID|State|NodeList"\ncat "{sacct_states}"\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)


def test_slurm_executor_submits_one_array_and_its_task_trains_the_run(swept, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    grid, reference, _ = swept
    record, states = tmp_path / "submitted", tmp_path / "states.txt"
    record.mkdir()
    states.write_text("")
    _fake_slurm(tmp_path / "bin", record, states)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    out = tmp_path / "sw"
    args = ["sweep", str(grid), "--out", str(out), "--executor", "slurm", "--partition", "gpu", "--gpus-per-run", "1",
            "--array-parallelism", "2", "--slurm-arg", "account=proj"]
    assert main(args) == 0
    assert "submitted 3 runs as SLURM job array 4242" in capsys.readouterr().out
    (submitted,) = record.iterdir()
    text = submitted.read_text()
    for directive in ("--array=0-2%2", "--partition=gpu", "--gpus-per-node=1", "--account=proj",
                      "--job-name=ltsam-tiny", "--signal=USR2@120"):
        assert f"#SBATCH {directive}" in text, text
    assert "submitit.core._submit" in text
    manifest = json.loads((out / "manifest.json").read_text())["runs"]
    assert [(manifest[n]["state"], manifest[n]["job"]) for n in ("sam_seed0", "sam_seed1", "sam_seed2")] == \
        [("submitted", "4242_0"), ("submitted", "4242_1"), ("submitted", "4242_2")]
    # Array task 0 as SLURM starts it: submitit's job runner with SLURM's environment.
    command = text.strip().splitlines()[-1]
    folder = command.split("submitit.core._submit")[-1].strip().strip("'")
    env = dict(_env(), SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4243", SLURM_ARRAY_JOB_ID="4242",
               SLURM_ARRAY_TASK_ID="0", SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_NODEID="0",
               SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost")
    task = subprocess.run([sys.executable, "-u", "-m", "submitit.core._submit", folder], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert task.returncode == 0, task.stdout[-2000:] + task.stderr[-2000:]
    run, ref = out / "runs" / "sam_seed0", reference / "runs" / "sam_seed0"
    assert (run / "final.json").is_file()
    wa, wb = _weights(ref / "last.pt"), _weights(run / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same run as the local executor's
    # Running the sweep again: task 0 is done; sacct says the others still hold their runs.
    states.write_text("4242_1|RUNNING|node1\n4242_2|PENDING|\n")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "1 done (skipped)" in text and "2 still with their SLURM job" in text and "nothing to run" in text
    assert len(list(record.iterdir())) == 1  # nothing submitted again
    # Once sacct reports them failed (e.g. cancelled), a re-run submits them again as a new array.
    states.write_text("4242_1|CANCELLED|node1\n4242_2|FAILED|\n")
    assert main(args) == 0
    assert "submitted 2 runs" in capsys.readouterr().out
    assert "--array=0-1%2" in sorted(record.iterdir())[-1].read_text()


# ---------------------------------------------------------------- the report of the sweep
def _hand(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, written out: s = sqrt(sum (x - mean)^2 / (n - 1))."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_report_means_and_stds_match_a_hand_computation_from_the_run_folders(swept, tmp_path: Path,
                                                                             capsys) -> None:
    _, out, _ = swept
    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    printed = capsys.readouterr().out
    with open(rep / "report.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["config"], row["n"], row["seeds"]) == ("sam", "3", "0 1 2")
    runs = [out / "runs" / f"sam_seed{s}" for s in range(3)]
    finals = [json.loads((r / "final.json").read_text()) for r in runs]
    # best-val, selected here from each run's metrics.jsonl: the highest val top-1, the earliest on a tie
    picked = [max(_rows(r), key=lambda x: (x["val_top1"], -x["epoch"])) for r in runs]
    expected = {
        "last_top1": [f["final"]["top1"] for f in finals],
        "last_medium": [f["final"]["shot_acc"]["medium"] for f in finals],
        "best_val_top1": [p["test_top1"] for p in picked],
        "best_val_few": [p["few_acc"] for p in picked],
        "best_test_top1": [max(x["test_top1"] for x in _rows(r)) for r in runs],
    }
    # Percentages (size <= 100) in float64: the two sums of 3 terms differ by rounding only.
    tol = rtol(torch.float64, n=3, stages=3) * 100
    for key, xs in expected.items():
        m, sd = _hand(xs)
        assert abs(float(row[f"{key}_mean"]) - m) <= tol, key
        assert abs(float(row[f"{key}_std"]) - sd) <= tol, key
    m, sd = _hand(expected["last_top1"])
    assert f"| sam | 3 | {m:.2f} ± {sd:.2f} |" in printed
    assert (rep / "report.md").read_text().startswith("| config | n | last top-1 |")
    for fig in ("per_class_vs_size.png", "shot_curves.png"):
        assert (rep / fig).stat().st_size > 1000
