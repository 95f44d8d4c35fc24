#!/usr/bin/env bash
# GPU check, one script for a lent GPU machine (H100), inside about 9 minutes:
#   1. a Python with torch (system python3, or $PYTHON), ltsam installed into it (pip install -e .);
#      steps 1 and 3 are shared with scripts/gpu_table.sh through scripts/gpu_common.sh;
#   2. benchmarks/train_epoch.py on the GPU (reference pipeline vs ltsam, SGD and SAM);
#   3. the JPEG CIFAR-10 copy extracted, then the full CIFAR-10-LT (imbalance 0.01) LDAM-DRW-SAM
#      recipe (rho 0.8, resnet32, 200 epochs) trained, and its final/best accuracies printed.
#
# The data travel with the repo copy in a git-ignored folder (never commit them):
#     mkdir -p gpu_data && cp <path>/cifar10-jpeg.tar.gz gpu_data/ && echo /gpu_data/ >> .git/info/exclude
# then, on the GPU machine, from the repo root:  bash scripts/gpu_check.sh
#
# Environment (all optional):
#   EPOCHS=200            training epochs
#   DATA_TAR=gpu_data/cifar10-jpeg.tar.gz   archive with train/<class>/*.jpg and test/<class>/*.jpg
#   DATA_ROOT=            an already extracted folder (ROOT/train, ROOT/test); skips DATA_TAR
#   EXTRACT_DIR=/tmp/ltsam-cifar10-jpeg     where DATA_TAR is extracted
#   OUT=./runs            results: $OUT/gpu_run (the run folder) and $OUT/gpu_check.log
#   PYTHON=               interpreter to use (default: python3 if it has torch, else a venv, $VENV,
#                         default /tmp/ltsam-gpu-venv, into which pip installs torch)
#   BENCH=auto            1: run the benchmark, 0: skip it; auto: on CUDA only (CPU: skipped)
#   BENCH_ARGS="--steps 20 --rounds 3"      benchmark options (on a CPU try "--steps 2 --rounds 1")
#   BENCH_TIMEOUT=200     seconds the benchmark may take before it is cut off
#   BUDGET_S=540          seconds for the whole script; training is cut off when they run out
#   TRAIN_ARGS=           extra flags for ltsam train
#   PACK=0                1: at the end, pack $OUT/gpu_run into one file, $OUT/gpu_run.tar.gz (for
#                         transfers that limit the number of files; the run folder holds 8 or more)
# CPU smoke test on a tiny image folder (ROOT/train/<class>/*.png, ROOT/test/<class>/*.png):
#     PYTHON=.venv/bin/python EPOCHS=1 DATA_ROOT=/tmp/tiny OUT=/tmp/gpu_smoke bash scripts/gpu_check.sh
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd -P)
export PYTHONUNBUFFERED=1

EPOCHS="${EPOCHS:-200}"
OUT="${OUT:-./runs}"
BENCH="${BENCH:-auto}"
BENCH_ARGS="${BENCH_ARGS:---steps 20 --rounds 3}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-200}"
BUDGET_S="${BUDGET_S:-540}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: > "$LOG"

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
# shellcheck source=scripts/gpu_common.sh
source "$REPO/scripts/gpu_common.sh"   # gpu_python (PY, HAS_CUDA) and gpu_data (ROOT)

# ---------------------------------------------------------------- 1. Python, torch, ltsam
gpu_python || exit 1

# ---------------------------------------------------------------- 2. benchmark
if [[ "$BENCH" == "1" || ( "$BENCH" == "auto" && "$HAS_CUDA" == "1" ) ]]; then
    say "benchmark: benchmarks/train_epoch.py $BENCH_ARGS (cut off after ${BENCH_TIMEOUT}s)"
    # shellcheck disable=SC2086
    timeout "$BENCH_TIMEOUT" "$PY" benchmarks/train_epoch.py $BENCH_ARGS 2>&1 \
        | grep --line-buffered -v -e "^W[0-9]" -e "warn_once" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [[ $rc -eq 0 ]] || say "benchmark exited with status $rc (124 = cut off)"
else
    say "benchmark skipped (no CUDA; BENCH=1 runs it anyway, e.g. BENCH_ARGS='--steps 2 --rounds 1')"
fi

# ---------------------------------------------------------------- 3. data
gpu_data || exit 1

# ---------------------------------------------------------------- 4. the 200-epoch recipe
left=$(( BUDGET_S - ($(date +%s) - T0) ))
(( left < 60 )) && left=60
RUN="$OUT/gpu_run"
say "training: CIFAR-10-LT (0.01) resnet32 LDAM-DRW-SAM rho 0.8, $EPOCHS epochs -> $RUN (cut off after ${left}s)"
T1=$(date +%s.%N)
# shellcheck disable=SC2086
timeout "$left" "$PY" -m ltsam train --dataset folder --data-root "$ROOT" --imb-factor 0.01 --arch resnet32 \
    --loss ldam --train-rule drw --optimizer sam --rho 0.8 --epochs "$EPOCHS" --no-progress \
    --out "$RUN" --overwrite $TRAIN_ARGS 2>&1 | grep --line-buffered -v -e "^W[0-9]" -e "warn_once" | tee -a "$LOG"
rc=${PIPESTATUS[0]}
WALL=$("$PY" -c "import time; print(f'{time.time() - $T1:.1f}')")
[[ $rc -eq 0 ]] || say "training exited with status $rc (124 = cut off by the budget)"

# ---------------------------------------------------------------- 5. summary
"$PY" - "$RUN" "$WALL" "$EPOCHS" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

run, wall, epochs = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])

def f(v):
    return "-" if v is None else f"{v:.2f}"

def ep(e):  # records count epochs from 0
    return "-" if e is None else e + 1

final_path, metrics_path = run / "final.json", run / "metrics.jsonl"
if final_path.exists():
    s = json.loads(final_path.read_text())
    fin, best = s["final"], s["best"]
    print(f"GPU RUN DONE: {s['epochs_done']}/{s['epochs']} epochs on {s['device']}, "
          f"{s['train_images']} train / {s['test_images']} test images")
    print(f"final: top1 {f(fin['top1'])}  many {f(fin['shot_acc']['many'])}  "
          f"medium {f(fin['shot_acc']['medium'])}  few {f(fin['shot_acc']['few'])}")
    print(f"best (epoch {ep(best['epoch'])} of {s['epochs']}): top1 {f(best['top1'])}  many {f(best['shot_acc']['many'])}  "
          f"medium {f(best['shot_acc']['medium'])}  few {f(best['shot_acc']['few'])}")
    print(f"wall time: {wall:.0f} s for the train command ({wall / 60:.1f} min); "
          f"train+eval time in final.json {s['train_seconds']:.0f} s")
elif metrics_path.exists() and metrics_path.read_text().strip():
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    last, best = rows[-1], max(rows, key=lambda r: r["test_top1"])
    print(f"GPU RUN INCOMPLETE: {len(rows)}/{epochs} epochs (no final.json); from metrics.jsonl:")
    for name, r in ((f"last (epoch {ep(last['epoch'])})", last), (f"best (epoch {ep(best['epoch'])})", best)):
        print(f"{name}: top1 {f(r['test_top1'])}  many {f(r['many_acc'])}  medium {f(r['medium_acc'])}  "
              f"few {f(r['few_acc'])}")
    print(f"wall time: {wall:.0f} s; mean epoch {sum(r['seconds'] for r in rows) / len(rows):.2f} s")
else:
    print(f"GPU RUN FAILED: no results in {run} (wall {wall:.0f} s)")
    sys.exit(1)
EOF
status=${PIPESTATUS[0]}
if [[ "${PACK:-0}" == "1" && -d "$RUN" ]]; then
    tar -czf "$RUN.tar.gz" -C "$OUT" gpu_run && rm -rf "$RUN" && say "packed the run folder into $RUN.tar.gz"
fi
say "total $(( $(date +%s) - T0 ))s; log $LOG"
exit "$status"
