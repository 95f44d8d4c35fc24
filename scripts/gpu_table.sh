#!/usr/bin/env bash
# The paper's CIFAR-10-LT (imbalance factor 0.01) table on one GPU, inside one device call:
#   1. a Python with torch and this checkout's ltsam (scripts/gpu_common.sh: gpu_python);
#   2. the JPEG CIFAR-10 copy extracted once (gpu_common.sh: gpu_data);
#   3. the six recipes cifar10-lt-{ce, ce-drw, ldam-drw, ce-sam, ce-drw-sam, ldam-drw-sam} started at
#      once, each its own `ltsam train --recipe NAME --dataset folder --data-root ROOT --amp bf16
#      --channels-last --compile --no-progress` process and run folder, all sharing the one GPU;
#   4. a watcher that prints each run's epochs and seconds per epoch as they come, kills what is still
#      running when the wall budget (BUDGET_S) is spent, and (FIT=1) restarts the six with a shorter,
#      complete schedule when the measured speed shows that EPOCHS will not fit (see FIT below);
#   5. a summary table per recipe: epochs done, final top-1, best top-1 on the test set and its epoch
#      (the paper's protocol: it reports the best test epoch; there is no validation split), many /
#      medium / few-shot accuracy (final), seconds per epoch, wall time.
#
# The data travel with the repo copy in the git-ignored folder gpu_data/ (never commit them):
#     mkdir -p gpu_data && cp /work/shared/data/cifar10-jpeg.tar.gz gpu_data/
# then on the GPU machine, from the repo root:   OUT=$OUT bash scripts/gpu_table.sh
#
# Environment (all optional):
#   EPOCHS=200        epochs per run; every schedule (LR warm-up and drops, DRW switch) scales with it
#   RECIPES="..."     space-separated recipe names (default: the six above)
#   BUDGET_S=530      seconds for the whole script, from its start; runs still going then are killed
#                     (their metrics.jsonl, one line per finished epoch, is still summarised)
#   FIT=1             once every run has CAL_EPOCHS epochs, project the finish from the measured
#                     seconds per epoch; if EPOCHS would overrun BUDGET_S, kill the six and start them
#                     again with the largest epoch count that fits (at least MIN_EPOCHS; the first
#                     attempt's folders are kept under attempt1/). FIT=0: never restart.
#   CAL_EPOCHS=4      epochs per run measured before that decision (epoch 1 holds compile time)
#   MIN_EPOCHS=10     no restart for fewer epochs than this (the partial runs go on instead)
#   RESTART_S=        seconds a restart takes to its first epoch (default: 0.4 x the measured cold
#                     start, at least 45, as inductor's cache makes the second compile quick)
#                     The fitted count stays conservative: it assumes the slowest run's speed with all
#                     six going, while the SAM runs speed up once the SGD runs end (H200: 34 epochs
#                     fitted this way ended 145 s inside the budget).
#   DATA_TAR=gpu_data/cifar10-jpeg.tar.gz, DATA_ROOT=, EXTRACT_DIR=/tmp/ltsam-cifar10-jpeg  (data)
#   PYTHON=           interpreter (default: python3 if it has torch; see gpu_common.sh)
#   WORK=/tmp/ltsam-table   run folders (WORK/runs/<recipe>) and per-run logs (WORK/logs/<recipe>.log)
#   OUT=              if set: results go there, at most 4 files (the device tool brings back 8):
#                     gpu_table.log, results.md (the table), results.json (the same, per recipe, with
#                     per-epoch top-1 and seconds), runs.tar.gz (each run folder's metrics.jsonl,
#                     final.json, config.json, figures, tensorboard events and its log; no *.pt).
#                     If unset they go to WORK.
#   RUN_THREADS=2     OMP/MKL threads per training process (six share the machine's cores)
#   TRAIN_ARGS=       extra flags for every ltsam train (later flags win, e.g. "--no-compile")
#   FINAL_S=20        seconds kept for a run's final evaluation and figures after its last epoch
# CPU smoke test on a tiny image folder (ROOT/train/<class>/*.png with 100 per class, ROOT/test/...):
#     PYTHON=.venv/bin/python EPOCHS=1 DATA_ROOT=/tmp/tiny OUT=/tmp/table_smoke \
#         TRAIN_ARGS="--no-compile --eval-batch-size 100" bash scripts/gpu_table.sh
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd -P)
export PYTHONUNBUFFERED=1

export EPOCHS="${EPOCHS:-200}"
export RECIPES="${RECIPES:-cifar10-lt-ce cifar10-lt-ce-drw cifar10-lt-ldam-drw cifar10-lt-ce-sam cifar10-lt-ce-drw-sam cifar10-lt-ldam-drw-sam}"
export BUDGET_S="${BUDGET_S:-530}"
export FIT="${FIT:-1}" CAL_EPOCHS="${CAL_EPOCHS:-4}" MIN_EPOCHS="${MIN_EPOCHS:-10}" FINAL_S="${FINAL_S:-20}"
export RUN_THREADS="${RUN_THREADS:-2}" TRAIN_ARGS="${TRAIN_ARGS:-}"
WORK="${WORK:-/tmp/ltsam-table}"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RES="${OUT:-$WORK}"            # where the results files go ($OUT on the device machine)
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
LOG="$RES/gpu_table.log"       # written as we go, so that a cut-off call still brings it back
: > "$LOG"
export T0 WORK RES LOG

say() { echo "[gpu_table +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
# shellcheck source=scripts/gpu_common.sh
source "$REPO/scripts/gpu_common.sh"   # gpu_python (PY, HAS_CUDA) and gpu_data (ROOT)

# ---------------------------------------------------------------- 1. Python, torch, ltsam
gpu_python || exit 1
[[ "$HAS_CUDA" == "1" ]] || say "no CUDA: the runs go to the CPU (a smoke test, not a measurement)"

# ---------------------------------------------------------------- 2. data
gpu_data || exit 1
export ROOT PY

# ---------------------------------------------------------------- 3-5. runs, watcher, summary
# One Python process starts the runs (each in its own process group, so that a kill takes its
# compile workers too), watches their metrics.jsonl, enforces the budget and writes the results.
say "recipes: $RECIPES; $EPOCHS epochs; budget ${BUDGET_S}s from the script's start; FIT=$FIT"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, shlex, shutil, signal, statistics, subprocess, sys, time
from pathlib import Path

E = os.environ
T0, BUDGET = float(E["T0"]), float(E["BUDGET_S"])
RECIPES = E["RECIPES"].split()
EPOCHS, FIT = int(E["EPOCHS"]), E["FIT"] == "1"
CAL, MIN_EPOCHS, FINAL_S = max(2, int(E["CAL_EPOCHS"])), int(E["MIN_EPOCHS"]), float(E["FINAL_S"])
WORK, RES, ROOT, PY = Path(E["WORK"]), Path(E["RES"]), E["ROOT"], E["PY"]
TRAIN_ARGS = shlex.split(E["TRAIN_ARGS"])
PACK_S = 15                       # kept at the end for the summary and the tar.gz
DEADLINE = T0 + BUDGET - PACK_S   # runs still going then are killed
try:
    from ltsam.recipes import PAPER_TOP1
except Exception:  # noqa: BLE001
    PAPER_TOP1 = {}


def now():
    return time.time()


def stamp():
    return f"[gpu_table +{now() - T0:.0f}s]"


def gpu_state():
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        util, mem = q.stdout.strip().split(",")[:2]
        return f"GPU {util.strip()}% busy, {int(mem) / 1024:.1f} GiB used"
    except Exception:  # noqa: BLE001 - no nvidia-smi (CPU smoke test)
        return ""


class Run:
    def __init__(self, recipe, epochs):
        self.recipe, self.epochs = recipe, epochs
        self.dir = WORK / "runs" / recipe
        self.log = WORK / "logs" / f"{recipe}.log"
        self.seen = {}            # epochs done -> time first seen by the watcher
        self.rc, self.killed, self.end = None, False, None

    def start(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [PY, "-m", "ltsam", "train", "--recipe", self.recipe, "--dataset", "folder",
               "--data-root", ROOT, "--epochs", str(self.epochs), "--amp", "bf16", "--channels-last",
               "--compile", "--no-progress", "--out", str(self.dir), "--overwrite", *TRAIN_ARGS]
        env = dict(os.environ, OMP_NUM_THREADS=E["RUN_THREADS"], MKL_NUM_THREADS=E["RUN_THREADS"])
        self.cmd = " ".join(shlex.quote(c) for c in cmd)
        self.t_start = now()
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.seen = {0: self.t_start}

    def rows(self):
        p = self.dir / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def poll(self):
        n = len(self.rows())
        for k in range(1, n + 1):
            self.seen.setdefault(k, now())
        if self.rc is None and self.proc.poll() is not None:
            self.rc, self.end = self.proc.returncode, now()
        return n

    @property
    def alive(self):
        return self.rc is None

    def wall_per_epoch(self):
        """Wall seconds per epoch between the watcher's sightings, epoch 1 (compile) left out."""
        ks = sorted(k for k in self.seen if k >= 1)
        if len(ks) < 3:
            return None
        return (self.seen[ks[-1]] - self.seen[ks[1]]) / (ks[-1] - ks[1])

    def kill(self):
        if not self.alive:
            return
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.rc, self.end = self.proc.returncode, now()


def compile_seconds(log):
    try:
        for line in log.read_text(errors="replace").splitlines():
            if "compiled with torch.compile in" in line:
                return float(line.split(" in ")[1].split("s")[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def summarise(runs, attempt_note):
    out = []
    for r in runs:
        rows, final = r.rows(), None
        fpath = r.dir / "final.json"
        if fpath.exists():
            try:
                final = json.loads(fpath.read_text())
            except ValueError:
                final = None
        secs = [x["seconds"] for x in rows]
        best = max(rows, key=lambda x: x["test_top1"]) if rows else None
        if final is not None:
            fin = final["final"]
            top1, shots = fin["top1"], fin["shot_acc"]
        elif rows:
            top1 = rows[-1]["test_top1"]
            shots = {k: rows[-1][f"{k}_acc"] for k in ("many", "medium", "few")}
        else:
            top1, shots = None, {"many": None, "medium": None, "few": None}
        if r.alive:
            status = "running"
        elif r.rc == 0 and final is not None:
            status = "done"
        elif r.killed and final is not None and len(rows) == r.epochs:
            status = "done (killed while drawing figures)"  # final.json is written before the figures
        elif r.killed:
            status = "cut off (budget)"
        else:
            status = f"failed (rc {r.rc})"
        out.append({
            "recipe": r.recipe, "status": status, "epochs_done": len(rows), "epochs": r.epochs,
            "final_top1": top1, "final_is_last_epoch_only": final is None,
            "best_on_test_top1": best["test_top1"] if best else None,
            "best_on_test_epoch": best["epoch"] + 1 if best else None,
            "final_many": shots["many"], "final_medium": shots["medium"], "final_few": shots["few"],
            "seconds_per_epoch_ltsam": statistics.mean(secs[1:]) if len(secs) > 1 else (secs[0] if secs else None),
            "first_epoch_seconds": secs[0] if secs else None,
            "wall_per_epoch": r.wall_per_epoch(),
            "compile_seconds": compile_seconds(r.log),
            "wall_seconds": ((r.end or now()) - r.t_start),
            "paper_top1": PAPER_TOP1.get(r.recipe),
            "command": r.cmd,
            "per_epoch": [{"epoch": x["epoch"] + 1, "top1": x["test_top1"], "seconds": x["seconds"]}
                          for x in rows],
        })

    def f(v, d=2):
        return "–" if v is None else f"{v:.{d}f}"

    lines = [f"CIFAR-10-LT (imbalance 0.01, JPEG copy), {gpu_name()}, {len(runs)} runs at once; {attempt_note}", "",
             "| recipe | status | epochs | final top-1 | best on test (epoch) | many | medium | few "
             "| s/epoch (ltsam) | wall/epoch (s) | compile (s) | wall (s) | paper |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in out:
        star = "*" if x["final_is_last_epoch_only"] and x["final_top1"] is not None else ""
        lines.append(
            f"| {x['recipe']} | {x['status']} | {x['epochs_done']}/{x['epochs']} | {f(x['final_top1'])}{star} "
            f"| {f(x['best_on_test_top1'])} ({x['best_on_test_epoch'] or '–'}) | {f(x['final_many'])} "
            f"| {f(x['final_medium'])} | {f(x['final_few'])} | {f(x['seconds_per_epoch_ltsam'])} "
            f"| {f(x['wall_per_epoch'])} | {f(x['compile_seconds'], 0)} | {f(x['wall_seconds'], 0)} "
            f"| {x['paper_top1'] or '–'} |")
    lines += ["", "final top-1 / many / medium / few: final.json's last evaluation; * = no final.json "
              "(run cut off or failed): the last finished epoch's test evaluation.",
              "best on test: the highest test top-1 over the epochs (the paper's protocol, which selects on "
              "the test set).",
              "s/epoch (ltsam): mean of metrics.jsonl 'seconds' (train + test evaluation) without epoch 1; "
              "wall/epoch: between the watcher's sightings of new epochs (checkpoints included), epoch 1 "
              "left out; wall: the process's life, start-up, data decoding and compile included."]
    (RES / "results.md").write_text("\n".join(lines) + "\n")
    (RES / "results.json").write_text(json.dumps({"note": attempt_note, "device": gpu_name(), "runs": out},
                                                 indent=1) + "\n")
    return lines


_GPU = None


def gpu_name():
    global _GPU
    if _GPU is None:
        try:
            _GPU = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=10).stdout.strip() or "CPU"
        except Exception:  # noqa: BLE001
            _GPU = "CPU"
    return _GPU


def launch(epochs):
    runs = [Run(rc, epochs) for rc in RECIPES]
    for r in runs:
        if r.dir.exists():
            shutil.rmtree(r.dir)
        r.start()
    print(f"{stamp()} started {len(runs)} runs, {epochs} epochs each; e.g. {runs[0].cmd}", flush=True)
    return runs


def watch(runs, decide):
    """Poll until every run ended or the deadline; print progress. ``decide`` (or None) is called
    once every live run has CAL epochs; it returns True to stop watching (a restart)."""
    last_print, reported = 0.0, set()
    while any(r.alive for r in runs):
        time.sleep(0.5)
        counts = {r.recipe: r.poll() for r in runs}
        for r in runs:
            n = counts[r.recipe]
            if n >= 1 and (r.recipe, 1) not in reported:
                reported.add((r.recipe, 1))
                print(f"{stamp()} {r.recipe}: epoch 1 done {r.seen[1] - r.t_start:.0f}s after its start "
                      f"(data, compile, first epoch)", flush=True)
            if not r.alive and (r.recipe, "end") not in reported:
                reported.add((r.recipe, "end"))
                print(f"{stamp()} {r.recipe}: exited rc {r.rc} after {n}/{r.epochs} epochs "
                      f"({r.end - r.t_start:.0f}s)", flush=True)
                if r.rc != 0 and not r.killed:
                    print("    last lines of its log:\n    " + "\n    ".join(
                        r.log.read_text(errors="replace").splitlines()[-15:]), flush=True)
        if now() - last_print >= 30:
            last_print = now()
            parts = []
            for r in runs:
                w = r.wall_per_epoch()
                parts.append(f"{r.recipe.replace('cifar10-lt-', '')} {counts[r.recipe]}/{r.epochs}"
                             + (f" {w:.2f}s/ep" if w else ""))
            print(f"{stamp()} " + ", ".join(parts) + (f"; {gpu_state()}" if gpu_state() else ""), flush=True)
            summarise(runs, "in progress")
        if decide is not None and all(not r.alive or counts[r.recipe] >= CAL for r in runs):
            stop = decide(runs, counts)
            decide = None
            if stop:
                return "restart"
        if now() >= DEADLINE:
            print(f"{stamp()} budget spent: killing the runs still going", flush=True)
            for r in runs:
                r.kill()
            return "deadline"
    return "ended"


def fit_decision(runs, counts):
    live = [r for r in runs if r.alive]
    if not live:
        return False
    spe = max(r.wall_per_epoch() or 0.0 for r in live)
    finish = max(now() + (r.epochs - counts[r.recipe]) * (r.wall_per_epoch() or spe) for r in live) + FINAL_S
    startup = max(r.seen[1] - r.t_start - (r.wall_per_epoch() or 0.0) for r in live)
    # A restart starts faster than this cold start: inductor's cache holds the compiled kernels
    # (H200, six runs: 134 s cold, 36-42 s on the restart). RESTART_S, if set, replaces the estimate.
    restart = float(E["RESTART_S"]) if E.get("RESTART_S") else min(startup, max(45.0, 0.4 * startup))
    print(f"{stamp()} measured: slowest run {spe:.2f} s/epoch with all {len(runs)} going, start-up (data + "
          f"compile) up to {startup:.0f}s (a restart: about {restart:.0f}s); {EPOCHS} epochs would end "
          f"at +{finish - T0:.0f}s, budget ends at +{DEADLINE - T0:.0f}s", flush=True)
    if finish <= DEADLINE:
        print(f"{stamp()} {EPOCHS} epochs fit: carrying on", flush=True)
        return False
    # The restart compiles again (inductor's cache makes it quicker); the SGD runs end first, which
    # speeds up the SAM ones, so this is conservative.
    fit = int((DEADLINE - now() - restart - FINAL_S) / spe) if spe > 0 else 0
    if not FIT or fit < MIN_EPOCHS:
        print(f"{stamp()} {EPOCHS} epochs do not fit ({fit} would); FIT={int(FIT)}, MIN_EPOCHS={MIN_EPOCHS}: "
              f"carrying on, the runs will be cut off at the budget", flush=True)
        return False
    print(f"{stamp()} {EPOCHS} epochs do not fit: restarting the {len(runs)} runs with {fit} epochs (schedules scale)",
          flush=True)
    return fit


runs = launch(EPOCHS)
state = {}


def decide(rs, counts):
    fit = fit_decision(rs, counts)
    state["fit"] = fit
    return bool(fit)


how = watch(runs, decide)
note = f"{EPOCHS} epochs as asked"
if how == "restart":
    for r in runs:
        r.kill()
    lines = summarise(runs, f"attempt 1 ({EPOCHS} epochs), stopped for a restart")
    keep = WORK / "attempt1"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    shutil.copy(RES / "results.json", keep / "results.json")
    shutil.copy(RES / "results.md", keep / "results.md")
    for r in runs:
        shutil.move(str(r.dir), str(keep / r.recipe))
        shutil.move(str(r.log), str(keep / f"{r.recipe}.log"))
    print("\n".join(lines), flush=True)
    runs = launch(state["fit"])
    note = (f"{state['fit']} epochs (the {EPOCHS}-epoch schedule did not fit the {BUDGET:.0f}s budget at the "
            f"measured speed; every schedule scaled to {state['fit']} epochs)")
    how = watch(runs, None)
if how == "deadline":
    note += "; runs still going at the budget's end were cut off"
lines = summarise(runs, note)
print("\n" + "\n".join(lines), flush=True)
sys.exit(0 if all(r.rc == 0 for r in runs) else 3)
EOF
status=${PIPESTATUS[0]}

# ---------------------------------------------------------------- pack the run folders
# One tar.gz (the device tool brings back 8 files at most): run folders without checkpoints, logs.
if [[ -d "$WORK/runs" ]]; then
    tar -czf "$RES/runs.tar.gz" -C "$WORK" --exclude='*.pt' runs logs $( [[ -d "$WORK/attempt1" ]] && echo attempt1 ) \
        && say "run folders (no *.pt) packed into $RES/runs.tar.gz ($(du -h "$RES/runs.tar.gz" | cut -f1))"
fi
say "total $(( $(date +%s) - T0 ))s; results in $RES (results.md, results.json, runs.tar.gz, gpu_table.log)"
exit "$status"
