#!/usr/bin/env bash
# Learning check of bf16 autocast + channels-last on a CPU against fp32, same seed, with a second fp32 seed for the
# seed-to-seed spread: CE-SGD and LDAM-DRW-SAM (rho 0.8) on the JPEG CIFAR-10 copy, f = 0.01, the 200-epoch schedule
# stopped after $EPOCHS epochs. Six runs, one thread each, one after another:
#   {ce_sgd, ldam_drw_sam} x {fp32_s0, fp32_s1, bf16cl_s0}
# The runs advance in rounds of $CHUNK epochs (ltsam train --stop-after, then --resume), so that wherever the check
# is stopped all six have about the same number of epochs; run again (with the same or a larger EPOCHS), it continues
# each run from the epochs its metrics.jsonl holds. After each round scripts/bf16_table.py writes the per-epoch test
# top-1 to $OUT/table.md.
#
# Environment:
#   DATA_ROOT=            (required) the extracted copy: ROOT/train/<class>/*.jpg, ROOT/test/<class>/*.jpg
#   OUT=./runs/bf16check  run folders ($OUT/<loss>_<precision>_s<seed>), logs, table.md
#   EPOCHS=6  CHUNK=2     epochs per run, epochs per round
#   ARCH=resnet20         CIFAR ResNet (resnet32 is the recipes'; resnet20 for CPU time)
#   THREADS=1             CPU threads per run
#   TRAIN_ARGS=           extra flags for every run (e.g. --compile)
#   PYTHON=python3        an interpreter with ltsam importable (this checkout is put first on PYTHONPATH)
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$(pwd -P)/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
EPOCHS="${EPOCHS:-6}"
CHUNK="${CHUNK:-2}"
ARCH="${ARCH:-resnet20}"
THREADS="${THREADS:-1}"
OUT="${OUT:-./runs/bf16check}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
export OMP_NUM_THREADS="$THREADS"
if [[ -z "${DATA_ROOT:-}" || ! -d "${DATA_ROOT}/train" ]]; then
    echo "bf16_check: set DATA_ROOT to a folder with train/<class>/ and test/<class>/ images" >&2
    exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG="$OUT/bf16_check.log"
say() { echo "[bf16_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
COMMON=(--dataset folder --data-root "$DATA_ROOT" --imb-factor 0.01 --arch "$ARCH" --epochs 200 --threads "$THREADS"
        --no-compile --no-progress)
declare -A METHOD=([ce_sgd]="--loss ce --optimizer sgd" [ldam_drw_sam]="--loss ldam --train-rule drw --rho 0.8")
declare -A PREC=([fp32_s0]="--seed 0" [fp32_s1]="--seed 1" [bf16cl_s0]="--seed 0 --amp bf16 --channels-last")
say "$ARCH, $EPOCHS epochs of the 200-epoch schedule in rounds of $CHUNK, $THREADS thread(s); $(nproc --all) CPUs"
status=0
epochs_done() { if [[ -f "$1/metrics.jsonl" ]]; then grep -c . "$1/metrics.jsonl"; else echo 0; fi; }
for (( round=0; round * CHUNK < EPOCHS; round++ )); do
    for m in ce_sgd ldam_drw_sam; do
        for p in fp32_s0 bf16cl_s0 fp32_s1; do
            run="$OUT/${m}_${p}"
            have=$(epochs_done "$run")
            n=$(( EPOCHS - have < CHUNK ? EPOCHS - have : CHUNK ))
            (( n > 0 )) || continue  # a restarted check skips what is done
            t=$(date +%s)
            if [[ -f "$run/last.pt" ]]; then
                # shellcheck disable=SC2086
                "$PY" -m ltsam train --resume "$run" --stop-after "$n" --threads "$THREADS" --no-compile --no-progress \
                    >> "$run.log" 2>&1 || status=1
            else
                # shellcheck disable=SC2086
                "$PY" -m ltsam train "${COMMON[@]}" ${METHOD[$m]} ${PREC[$p]} --out "$run" --overwrite \
                    --stop-after "$n" $TRAIN_ARGS > "$run.log" 2>&1 || status=1
            fi
            say "${m}_${p}: epochs $(( have + 1 ))-$(( have + n )) in $(( $(date +%s) - t ))s (log $run.log)"
        done
    done
    "$PY" scripts/bf16_table.py "$OUT" > "$OUT/table.md" 2>> "$LOG" || status=1
done
cat "$OUT/table.md" | tee -a "$LOG"
say "done (status $status)"
exit $status
