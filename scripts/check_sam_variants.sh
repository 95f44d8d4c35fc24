#!/usr/bin/env bash
# Learning check of the imbalance-aware SAM variants on an image folder (the JPEG CIFAR-10 copy):
# five LDAM-DRW trainings on the same schedule, started together in the background -
#   sgd        --optimizer sgd
#   sam        --optimizer sam --rho $RHO
#   imbsam     --optimizer imbsam --rho $RHO --imbsam-eta $IMBSAM_ETA   (eta raised: at imbalance 0.01 no
#                                                                        CIFAR-10 class has fewer than 20 images)
#   focal_sam  --optimizer focal_sam --rho $RHO (gamma 3.0, lambda 0.5: Focal-SAM's CIFAR-10 values)
#   sam_every2 --optimizer sam --rho $RHO --sam-every 2
# - then a summary table from each run's final.json (top-1, many/medium/few, per-class accuracy) and
# `ltsam hessian` of SAM and ImbSAM on the tail classes (fewer than IMBSAM_ETA training images) with
# `ltsam hessian-compare sam imbsam`.
#
#     DATA_ROOT=/data/cifar10-jpeg bash scripts/check_sam_variants.sh      # ROOT/train/<class>/*, ROOT/test/<class>/*
#
# Environment (all optional but DATA_ROOT):
#   DATA_ROOT=            image folder (train/ and test/ or val/)
#   EPOCHS=200            epochs of every run (the LR, DRW and rho schedules scale with it)
#   OUT=./runs/sam_variants   one folder per run, its log beside it (<name>.log), summary.txt
#   RHO=0.8               radius of the four SAM runs (the paper's LDAM-DRW-SAM value on CIFAR-10-LT)
#   IMBSAM_ETA=100        ImbSAM's tail threshold (CIFAR-10-LT at 0.01: classes of 83 and 50 images)
#   PYTHON=python3        interpreter with torch (ltsam from this checkout is put on PYTHONPATH if needed)
#   TRAIN_ARGS=           extra flags for every `ltsam train` (e.g. --amp bf16, --device cuda:0)
#   HESSIAN=1             0: skip the Hessian comparison
#   HESSIAN_ARGS=         extra flags for `ltsam hessian` (e.g. --max-per-class 100 on a CPU)
#   HESSIAN_DEVICE=auto   cuda when there is one, else cpu
# CPU smoke test on a tiny folder:  EPOCHS=1 DATA_ROOT=/tmp/tiny OUT=/tmp/check bash scripts/check_sam_variants.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd -P)
export PYTHONUNBUFFERED=1

: "${DATA_ROOT:?set DATA_ROOT to the image folder (ROOT/train/<class>/*, ROOT/test/<class>/*)}"
EPOCHS="${EPOCHS:-200}"
OUT="${OUT:-./runs/sam_variants}"
RHO="${RHO:-0.8}"
IMBSAM_ETA="${IMBSAM_ETA:-100}"
PY="${PYTHON:-python3}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
HESSIAN="${HESSIAN:-1}"
HESSIAN_ARGS="${HESSIAN_ARGS:-}"
HESSIAN_DEVICE="${HESSIAN_DEVICE:-auto}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

say() { echo "[check_sam_variants] $*"; }
# This checkout's ltsam: the installed one if it is this checkout, else through PYTHONPATH=src.
AT=$("$PY" -c "import pathlib, ltsam.cli; print(pathlib.Path(ltsam.cli.__file__).resolve().parent)" 2>/dev/null)
if [[ "$AT" != "$REPO/src/ltsam" ]]; then
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import ltsam.cli" || { say "ltsam does not import with $PY"; exit 1; }
fi
[[ -d "$DATA_ROOT/train" ]] || { say "no train/ folder under $DATA_ROOT"; exit 1; }

COMMON=(--dataset folder --data-root "$DATA_ROOT" --imb-factor 0.01 --arch resnet32 --loss ldam --train-rule drw
        --epochs "$EPOCHS" --no-progress --overwrite)
declare -A FLAGS=(
    [sgd]="--optimizer sgd"
    [sam]="--optimizer sam --rho $RHO"
    [imbsam]="--optimizer imbsam --rho $RHO --imbsam-eta $IMBSAM_ETA"
    [focal_sam]="--optimizer focal_sam --rho $RHO --focal-sam-gamma 3.0 --focal-sam-lambda 0.5"
    [sam_every2]="--optimizer sam --rho $RHO --sam-every 2"
)
NAMES=(sgd sam imbsam focal_sam sam_every2)

declare -A PIDS=()
for name in "${NAMES[@]}"; do
    say "start $name: ltsam train ${COMMON[*]} ${FLAGS[$name]} $TRAIN_ARGS --out $OUT/$name"
    # shellcheck disable=SC2086
    "$PY" -m ltsam train "${COMMON[@]}" ${FLAGS[$name]} $TRAIN_ARGS --out "$OUT/$name" > "$OUT/$name.log" 2>&1 &
    PIDS[$name]=$!
done
FAILED=()
for name in "${NAMES[@]}"; do
    if wait "${PIDS[$name]}"; then
        say "$name finished"
    else
        say "$name FAILED (exit $?); the end of $OUT/$name.log:"
        tail -n 5 "$OUT/$name.log"
        FAILED+=("$name")
    fi
done

"$PY" - "$OUT" "${NAMES[@]}" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
def pct(v):
    return "-" if v is None else f"{v:.2f}"
rows = []
for name in names:
    path = out / name / "final.json"
    if not path.is_file():
        rows.append((name, None))
        continue
    rows.append((name, json.loads(path.read_text())))
first = next((r for _, r in rows if r), None)
if first:
    print(f"class sizes: {first['cls_num_list']}  ({first['epochs_done']}/{first['epochs']} epochs; final epoch, "
          f"best epoch by test top-1 in brackets)")
print(f"{'run':<11} {'top-1':>7} {'(best)':>8} {'many':>7} {'medium':>7} {'few':>7}  per-class accuracy (final)")
for name, r in rows:
    if r is None:
        print(f"{name:<11} no final.json (see {name}.log)")
        continue
    f, b = r["final"], r["best"]
    shots = f["shot_acc"]
    per_class = " ".join(pct(a) for a in f["per_class_acc"])
    print(f"{name:<11} {pct(f['top1']):>7} {'(' + pct(b['top1']) + ')':>8} {pct(shots['many']):>7} "
          f"{pct(shots['medium']):>7} {pct(shots['few']):>7}  {per_class}")
EOF

if [[ "$HESSIAN" == "1" ]]; then
    if [[ ! -f "$OUT/sam/last.pt" || ! -f "$OUT/imbsam/last.pt" ]]; then
        say "no Hessian comparison: the sam or imbsam run has no checkpoint"
        FAILED+=(hessian)
    else
        TAIL=$("$PY" -c "import json, sys; n = json.load(open(sys.argv[1]))['cls_num_list']; \
print(','.join(str(k) for k, c in enumerate(n) if c < float(sys.argv[2])))" "$OUT/sam/final.json" "$IMBSAM_ETA")
        DEV="$HESSIAN_DEVICE"
        [[ "$DEV" == "auto" ]] && DEV=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
        say "Hessian of SAM and ImbSAM on the tail classes ${TAIL:-(none)} (train split, $DEV)"
        ok=1
        for name in sam imbsam; do
            # shellcheck disable=SC2086
            "$PY" -m ltsam hessian "$OUT/$name" --classes "${TAIL:-all}" --device "$DEV" --no-progress \
                $HESSIAN_ARGS > "$OUT/hessian_$name.log" 2>&1 || { say "ltsam hessian $name failed:"; \
                tail -n 5 "$OUT/hessian_$name.log"; ok=0; }
        done
        if [[ $ok == 1 ]]; then
            "$PY" -m ltsam hessian-compare "$OUT/sam" "$OUT/imbsam" --labels sam imbsam | tee "$OUT/hessian_compare.txt"
            [[ ${PIPESTATUS[0]} -eq 0 ]] || FAILED+=(hessian-compare)
        else
            FAILED+=(hessian)
        fi
    fi
fi

if (( ${#FAILED[@]} )); then
    say "failed: ${FAILED[*]}"
    exit 1
fi
say "done: $OUT/summary.txt"
