#!/usr/bin/env bash
# The paper's CIFAR-10-LT (imbalance factor 0.01) table on one GPU: the six recipes
# cifar10-lt-{ce, ce-drw, ldam-drw, ce-sam, ce-drw-sam, ldam-drw-sam} on the JPEG CIFAR-10 copy, each recipe's
# SEEDS trained as ONE PACK (`ltsam train --recipe R --seeds ...`: one fused model in one process, bf16 autocast,
# channels-last), the six packs at once on the one GPU, then `ltsam report` (mean ± std over the seeds, the
# paper's figure beside its recipe). PACKED=0 runs the former path instead: one `ltsam sweep` of separate runs
# (submitit's local executor, --parallel N, torch.compile).
#
# TIME. Separate runs do NOT fit 200 epochs into a 9-minute device call: measured on one H200 with six runs
# at once, about 3.2 s/epoch for the SGD recipes and 4.3-5 s/epoch for the SAM ones, after a start of
# ~40-130 s; 200 epochs take ~19 minutes. Packs are not yet measured on a GPU (no device was lent when they
# landed): benchmarks/packed.py gives their speed; size EPOCHS and SEEDS from it. EPOCHS scales every
# schedule (LR warm-up and drops, the DRW switch) to a shorter run; a short run is a smoke test of the
# pipeline, not the paper's number. The sweep is cut off at BUDGET_S; its runs keep their last.pt, so the
# same command (same WORK) run again continues them, and the report says which runs are unfinished.
#
# The data travel with the repo copy in the git-ignored folder gpu_data/ (never commit them): a tarball of the
# CIFAR-10 JPEG folder copy (train/<class>/*.jpg, test/<class>/*.jpg), wherever yours lies:
#     mkdir -p gpu_data && cp PATH/TO/cifar10-jpeg.tar.gz gpu_data/
#     pip download -d gpu_data/wheels --no-deps submitit cloudpickle    # offline machines: ltsam's sweep needs
#     pip download -d gpu_data/wheels --no-deps --only-binary=:all: pyyaml   # (its Python's version and platform)
# then on the GPU machine, from the repo root:   OUT=$OUT bash scripts/gpu_check.sh
#
# Environment (all optional):
#   EPOCHS=200         epochs per run (see TIME above)
#   SEEDS=3            seeds per recipe (one pack each): a count (3 = seeds 0 1 2) or a list "0 3 7"
#   PACKED=1           1: one pack per recipe; 0: one sweep of separate runs
#   PARALLEL=          runs at once (default: all of them on a GPU, 2 on a CPU); they share the GPU
#   VAL_PER_CLASS=0    N > 0 holds out N training images per class for best-validation selection; on this
#                      folder copy they come from the training images before the profile (n_max = 5000 - N),
#                      so the training set is no longer the paper's; 0 keeps it
#   RECIPES="..."      space-separated recipe names (default: the six above)
#   BASE_EXTRA=        more settings for every run, as YAML "key: value" pairs, comma-separated
#                      (e.g. "compile: false, eval-batch-size: 100"); they reach `ltsam train` as data (a
#                      --config file; in the sweep, the grid's base), so switches take true / false
#   BUDGET_S=530       seconds for the whole script; the sweep is stopped REPORT_S before the end
#   REPORT_S=40        seconds kept for the report and the packing
#   DATA_TAR=gpu_data/cifar10-jpeg.tar.gz, DATA_ROOT=, EXTRACT_DIR=/tmp/ltsam-cifar10-jpeg  (data)
#   PYTHON=            interpreter (default: python3 if it has torch, else a venv $VENV, default /tmp/ltsam-gpu-venv)
#   WORK=/tmp/ltsam-table   the sweep folder (WORK/sweep: runs/, logs/, manifest.json)
#   OUT=               if set, results go there in at most 4 files: gpu_check.log, report.md, report.csv and
#                      report.tar.gz (the figures, every run's metrics.jsonl, final.json and config.json; no *.pt).
#                      If unset they stay under WORK.
#   RUN_THREADS=2      OMP/MKL threads per run (six share the machine's cores)
# CPU smoke test (a tiny folder /tmp/tiny/train/<class>/*.png, /tmp/tiny/test/<class>/*.png; about a minute;
# tests/test_gpu_check.py runs this very command):
#     PYTHON=.venv/bin/python EPOCHS=1 SEEDS=2 DATA_ROOT=/tmp/tiny WORK=/tmp/gpu_smoke/work OUT=/tmp/gpu_smoke \
#         BASE_EXTRA="compile: false, eval-batch-size: 100" bash scripts/gpu_check.sh
# (This script replaces scripts/gpu_table.sh and scripts/gpu_common.sh, which ran the same six recipes
# with a watcher of their own.)
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd -P)
export PYTHONUNBUFFERED=1

EPOCHS="${EPOCHS:-200}"
SEEDS="${SEEDS:-3}"
VAL_PER_CLASS="${VAL_PER_CLASS:-0}"
RECIPES="${RECIPES:-cifar10-lt-ce cifar10-lt-ce-drw cifar10-lt-ldam-drw cifar10-lt-ce-sam cifar10-lt-ce-drw-sam cifar10-lt-ldam-drw-sam}"
BASE_EXTRA="${BASE_EXTRA:-}"
BUDGET_S="${BUDGET_S:-530}"
REPORT_S="${REPORT_S:-40}"
WORK="${WORK:-/tmp/ltsam-table}"
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
RES="${OUT:-$WORK}"
mkdir -p "$RES" && RES=$(cd "$RES" && pwd)
LOG="$RES/gpu_check.log"
: > "$LOG"
export OMP_NUM_THREADS="${RUN_THREADS:-2}" MKL_NUM_THREADS="${RUN_THREADS:-2}"

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
has_torch() { "$1" -c "import torch" >/dev/null 2>&1; }

# ---------------------------------------------------------------- 1. Python with torch and this checkout's ltsam
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif has_torch python3; then
    PY=$(command -v python3)
else
    VENV="${VENV:-/tmp/ltsam-gpu-venv}"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv --system-site-packages "$VENV" || { say "cannot create a venv"; exit 1; }
    PY="$VENV/bin/python"
    has_torch "$PY" || "$PY" -m pip install -q torch torchvision || { say "no torch available"; exit 1; }
fi
# This checkout first (another checkout's install is left alone). An offline GPU machine installs submitit
# and pyyaml from wheels carried in gpu_data/wheels (see above), else from the package index.
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import submitit, yaml" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --find-links gpu_data/wheels submitit pyyaml >>"$LOG" 2>&1 \
        || "$PY" -m pip install -q submitit pyyaml >>"$LOG" 2>&1 || { say "submitit / pyyaml missing, not installable"; exit 1; }
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch, ltsam, submitit
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__}, submitit {submitit.__version__}, "
      f"ltsam from {ltsam.__file__}")
print("device:", torch.cuda.get_device_name(0) if cuda else f"CPU only ({torch.get_num_threads()} threads)")
EOF
"$PY" -c "import ltsam.cli" >/dev/null 2>&1 || { say "ltsam does not import"; exit 1; }
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

# ---------------------------------------------------------------- 2. data
if [[ -n "${DATA_ROOT:-}" ]]; then
    ROOT="$DATA_ROOT"
else
    DATA_TAR="${DATA_TAR:-gpu_data/cifar10-jpeg.tar.gz}"
    EXTRACT_DIR="${EXTRACT_DIR:-/tmp/ltsam-cifar10-jpeg}"
    [[ -f "$DATA_TAR" ]] || { say "no data: $DATA_TAR is missing (copy cifar10-jpeg.tar.gz there, or set DATA_ROOT)"; exit 1; }
    if [[ ! -f "$EXTRACT_DIR/.complete" ]]; then
        say "extracting $DATA_TAR into $EXTRACT_DIR"
        rm -rf "$EXTRACT_DIR" && mkdir -p "$EXTRACT_DIR"
        tar -xzf "$DATA_TAR" -C "$EXTRACT_DIR" || { say "extraction failed"; exit 1; }
        touch "$EXTRACT_DIR/.complete"
    fi
    TRAIN_DIR=$(find "$EXTRACT_DIR" -maxdepth 2 -type d -name train | head -n 1)
    ROOT=$(dirname "${TRAIN_DIR:-$EXTRACT_DIR/train}")
fi
[[ -d "$ROOT/train" ]] || { say "no train/ folder under $ROOT"; exit 1; }
ROOT=$(cd "$ROOT" && pwd)
say "data: $ROOT ($(find "$ROOT/train" -type f | wc -l) train files)"

# ---------------------------------------------------------------- 3. the runs: one pack per recipe (default), or one sweep
SEED_LIST=$( [[ "$SEEDS" =~ ^[0-9]+$ ]] && seq -s ' ' 0 $(( SEEDS - 1 )) || echo "$SEEDS")
N_RUNS=$(( $(wc -w <<<"$RECIPES") * $(wc -w <<<"$SEED_LIST") ))
if [[ "${PACKED:-1}" == "1" ]]; then
    # Each recipe's seeds train as one pack (one fused model, one process: `ltsam train --seeds`); the packs of
    # all recipes run at once and share the GPU. Stopped at the budget, each member keeps its last.pt and the
    # same command continues it (`ltsam train --resume WORK/packs/RECIPE`).
    left=$(( BUDGET_S - REPORT_S - ($(date +%s) - T0) ))
    (( left < 30 )) && left=30
    say "packs: $(wc -w <<<"$RECIPES") recipes x seeds [$SEED_LIST] = $N_RUNS runs, $EPOCHS epochs (stopped after ${left}s if still going)"
    mkdir -p "$WORK/packs"
    # The settings every pack shares, as data (a --config file), as the sweep's grid gives them: BASE_EXTRA's
    # "key: value" pairs are YAML, never words of a command line (`compile: false` is a switch set to false).
    SETTINGS="$WORK/packs/settings.yaml"
    echo "{dataset: folder, data-root: '$ROOT', epochs: $EPOCHS, amp: bf16, channels-last: true," \
         "val-per-class: $VAL_PER_CLASS${BASE_EXTRA:+, $BASE_EXTRA}}" > "$SETTINGS"
    declare -A PID_OF=()
    for recipe in $RECIPES; do
        dir="$WORK/packs/$recipe"
        if [[ -d "$dir" ]]; then how=(--resume "$dir"); else
            how=(--recipe "$recipe" --config "$SETTINGS" --seeds $SEED_LIST --out "$dir"); fi
        timeout -s INT -k 30 "$left" "$PY" -m ltsam train "${how[@]}" --no-progress >"$WORK/packs/$recipe.log" 2>&1 &
        PID_OF[$recipe]=$!
    done
    rc=0
    for recipe in $RECIPES; do
        wait "${PID_OF[$recipe]}"; code=$?
        grep -h -e "training " -e "^pack epoch" "$WORK/packs/$recipe.log" | tail -n 2 >>"$LOG"
        (( code == 0 )) && continue
        rc=$code
        if (( code == 124 || code == 130 || code == 137 )); then
            say "pack $recipe: stopped by the budget (status $code); run the same command again to continue it"
        else  # its own cause, from its log: ltsam's one-line error, else the log's last lines
            say "pack $recipe FAILED (status $code); from $WORK/packs/$recipe.log:"
            { grep -h "ltsam: error:" "$WORK/packs/$recipe.log" || tail -n 8 "$WORK/packs/$recipe.log"; } \
                | sed 's/^/    /' | tee -a "$LOG"
        fi
    done
    RUNS_DIR="$WORK/packs"
else
    GRID="$WORK/cifar10-lt-table.yaml"
    N_RUNS=$(( $(wc -w <<<"$RECIPES") * $( [[ "$SEEDS" =~ ^[0-9]+$ ]] && echo "$SEEDS" || wc -w <<<"$SEEDS") ))
    PARALLEL="${PARALLEL:-$( [[ "$HAS_CUDA" == "1" ]] && echo "$N_RUNS" || echo 2)}"
    {
        echo "name: cifar10-lt-table"
        echo "base: {dataset: folder, data-root: '$ROOT', epochs: $EPOCHS, amp: bf16, channels-last: true, compile: true,"
        echo "       val-per-class: $VAL_PER_CLASS${BASE_EXTRA:+, $BASE_EXTRA}}"
        echo "recipes: [$(sed 's/ \+/, /g' <<<"$RECIPES")]"
        if [[ "$SEEDS" =~ ^[0-9]+$ ]]; then echo "seeds: $SEEDS"; else echo "seeds: [$(sed 's/ \+/, /g' <<<"$SEEDS")]"; fi
    } > "$GRID"
    cat "$GRID" | tee -a "$LOG"
    left=$(( BUDGET_S - REPORT_S - ($(date +%s) - T0) ))
    (( left < 30 )) && left=30
    say "sweep: $N_RUNS runs, $EPOCHS epochs, $PARALLEL at once (stopped after ${left}s if still going)"
    # SIGINT to the sweep's process group at the budget: the sweep cancels its jobs, which keep their last.pt.
    timeout -s INT -k 30 "$left" "$PY" -m ltsam sweep "$GRID" --out "$WORK/sweep" --parallel "$PARALLEL" 2>&1 \
        | grep --line-buffered -v -e "^W[0-9]" -e "warn_once" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if (( rc == 124 || rc == 130 || rc == 137 )); then
        say "the sweep was stopped by the budget (status $rc); run the same command again to continue it"
    elif (( rc != 0 )); then
        say "the sweep exited with status $rc (its FAILED lines above name each failed run's cause and log)"
    fi
    # What each run printed (its epochs, seconds per epoch, compile time): the job logs.
    for f in "$WORK"/sweep/logs/*_log.out; do
        [[ -f "$f" ]] && grep -h -e "training " -e "compiled" -e "^epoch" "$f" | tail -n 3 >>"$LOG"
    done
    RUNS_DIR="$WORK/sweep"
fi

# ---------------------------------------------------------------- 4. the report
"$PY" -m ltsam report "$RUNS_DIR" --partial --out "$WORK/report" 2>&1 | tee -a "$LOG"
"$PY" - "$RUNS_DIR" <<'EOF' 2>&1 | tee -a "$LOG"
import json, statistics, sys
from pathlib import Path

# Seconds per epoch as each run measured them (metrics.jsonl 'seconds', train + evaluation), epoch 1 left out;
# each run named by its path under the packs or the sweep (RECIPE/seed0, runs/RECIPE_seed0).
root = Path(sys.argv[1])
for run in sorted(p.parent for p in root.glob("**/config.json") if "report" not in p.parts):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    secs = [r["seconds"] for r in rows[1:]]
    done = "done" if (run / "final.json").exists() else "unfinished"
    print(f"{str(run.relative_to(root)):<40} {len(rows):>4} epochs ({done})  "
          + (f"{statistics.mean(secs):.2f} s/epoch after the first ({rows[0]['seconds']:.0f} s)" if secs else ""))
EOF
if [[ -n "${OUT:-}" ]]; then
    cp "$WORK/report/report.md" "$WORK/report/report.csv" "$RES/" 2>/dev/null
    tar -czf "$RES/report.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='tensorboard' report "$(basename "$RUNS_DIR")" \
        2>/dev/null && say "packed the report and the run folders (no *.pt) into $RES/report.tar.gz"
fi
say "total $(( $(date +%s) - T0 ))s; results: $WORK/report (report.md, report.csv, figures)"
exit "$rc"
