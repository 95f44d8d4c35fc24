#!/usr/bin/env bash
# Learning check of the long-tail baselines (logit adjustment, post-hoc adjustment, cRT, LWS, tau-norm) on the
# JPEG CIFAR-10 copy, for a GPU machine:
#   1. a CE run and a logit-adjusted (--loss la) run with the same schedule, at the same time in the background
#      (ltsam train --dataset folder --imb-factor 0.01 --arch resnet32 --optimizer sgd --epochs $EPOCHS);
#   2. on the CE run, once it is done: the post-hoc logit-adjustment sweep (ltsam eval --logit-adjust 0:2:0.25),
#      then ltsam finetune --stage crt, lws and tau-norm (each stage's own published settings);
#   3. a table of top-1 and many/medium/few of each (final epoch) in $OUT/summary.md, also printed.
#
# Environment:
#   DATA_ROOT=            (required) the extracted copy: ROOT/train/<class>/*.jpg, ROOT/test/<class>/*.jpg
#   EPOCHS=200            epochs of the CE and LA runs (the step schedule scales with it)
#   OUT=./runs/baselines  run folders ($OUT/ce, $OUT/la, $OUT/ce_crt, ...), logs and summary.md
#   IMB_FACTOR=0.01       imbalance factor of the long-tail profile
#   STAGE_EPOCHS=         epochs of cRT and LWS (default: theirs, 10 and 5)
#   TRAIN_ARGS=           extra flags for both ltsam train runs (e.g. --amp bf16)
#   PYTHON=python3        an interpreter with ltsam importable (this checkout is put first on PYTHONPATH)
# CPU smoke test (the suite runs it on a generated folder): EPOCHS=1 DATA_ROOT=/tmp/tiny OUT=/tmp/bl bash scripts/check_baselines.sh
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$(pwd -P)/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
EPOCHS="${EPOCHS:-200}"
IMB_FACTOR="${IMB_FACTOR:-0.01}"
OUT="${OUT:-./runs/baselines}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
STAGE_EPOCHS="${STAGE_EPOCHS:-}"
if [[ -z "${DATA_ROOT:-}" || ! -d "${DATA_ROOT}/train" ]]; then
    echo "check_baselines: set DATA_ROOT to a folder with train/<class>/ and test/<class>/ images" >&2
    exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG="$OUT/check_baselines.log"
: > "$LOG"
say() { echo "[check_baselines +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
quiet() { grep --line-buffered -v -e "^W[0-9]" -e "warn_once"; }
status=0

# ---------------------------------------------------------------- 1. CE and LA, same schedule, concurrently
COMMON=(--dataset folder --data-root "$DATA_ROOT" --imb-factor "$IMB_FACTOR" --arch resnet32 --optimizer sgd
        --epochs "$EPOCHS" --no-progress --overwrite)
say "training CE and LA (tau 1), $EPOCHS epochs each, in the background"
# shellcheck disable=SC2086
"$PY" -m ltsam train "${COMMON[@]}" --loss ce --out "$OUT/ce" $TRAIN_ARGS > "$OUT/ce.log" 2>&1 &
PID_CE=$!
# shellcheck disable=SC2086
"$PY" -m ltsam train "${COMMON[@]}" --loss la --la-tau 1 --out "$OUT/la" $TRAIN_ARGS > "$OUT/la.log" 2>&1 &
PID_LA=$!
wait "$PID_CE"; RC_CE=$?
say "CE run finished with status $RC_CE (log $OUT/ce.log)"
tail -n 3 "$OUT/ce.log" | tee -a "$LOG"

# ---------------------------------------------------------------- 2. post-hoc sweep and second stages on CE
if [[ $RC_CE -eq 0 ]]; then
    say "post-hoc logit adjustment sweep on the CE run (last.pt)"
    "$PY" -m ltsam eval "$OUT/ce" --which last --logit-adjust 0:2:0.25 --json "$OUT/posthoc.json" 2>&1 \
        | quiet | tee -a "$LOG" || status=1
    for stage in crt lws tau-norm; do
        extra=()
        if [[ -n "$STAGE_EPOCHS" && "$stage" != "tau-norm" ]]; then extra=(--epochs "$STAGE_EPOCHS"); fi
        say "ltsam finetune --stage $stage on the CE run"
        "$PY" -m ltsam finetune "$OUT/ce" --stage "$stage" "${extra[@]}" --out "$OUT/ce_$stage" --overwrite \
            --no-progress > "$OUT/ce_$stage.log" 2>&1
        rc=$?
        tail -n 2 "$OUT/ce_$stage.log" | tee -a "$LOG"
        [[ $rc -eq 0 ]] || { say "finetune $stage exited with status $rc (log $OUT/ce_$stage.log)"; status=1; }
    done
else
    status=1
fi
wait "$PID_LA"; RC_LA=$?
say "LA run finished with status $RC_LA (log $OUT/la.log)"
tail -n 3 "$OUT/la.log" | tee -a "$LOG"
[[ $RC_LA -eq 0 ]] || status=1

# ---------------------------------------------------------------- 3. summary
"$PY" - "$OUT" "$EPOCHS" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json
import sys
from pathlib import Path

out, epochs = Path(sys.argv[1]), sys.argv[2]


def f(v):
    return "-" if v is None else f"{v:.2f}"


def row(name, result, note=""):
    g = result["shot_acc"]
    return f"| {name} | {f(result['top1'])} | {f(g['many'])} | {f(g['medium'])} | {f(g['few'])} | {note} |"


def final(folder):
    path = out / folder / "final.json"
    return json.loads(path.read_text()) if path.exists() else None


lines = [f"Long-tail baselines, {epochs}-epoch CE / LA runs (final-epoch results; stages on the CE run's last.pt)", "",
         "| method | top-1 | many | medium | few | note |", "|---|---|---|---|---|---|"]
missing = []
ce = final("ce")
if ce:
    lines.append(row("CE", ce["final"], f"{ce['epochs_done']}/{ce['epochs']} epochs on {ce['device']}"))
else:
    missing.append("ce")
posthoc = out / "posthoc.json"
if posthoc.exists():
    sweep = json.loads(posthoc.read_text())["logit_adjust"]
    one = next(r for r in sweep if abs(r["tau"] - 1.0) < 1e-9)
    lines.append(row("CE + post-hoc LA, tau 1", one, "argmax z - log prior"))
    best = max(sweep, key=lambda r: r["top1"])
    lines.append(row(f"CE + post-hoc LA, tau {best['tau']:g}", best, "best tau of 0:2:0.25 on the test set "
                     "(test-selected)"))
else:
    missing.append("posthoc")
for stage, label in (("crt", "cRT"), ("lws", "LWS"), ("tau-norm", "tau-norm")):
    s = final(f"ce_{stage}")
    if s is None:
        missing.append(f"ce_{stage}")
        continue
    note = (f"tau {s['tau']:g} ({s['tau_selected_on']})" if stage == "tau-norm" else
            f"{s['epochs_done']}/{s['epochs']} epochs")
    lines.append(row(label, s["final"], note))
la = final("la")
if la:
    lines.append(row("LA loss (tau 1)", la["final"], f"{la['epochs_done']}/{la['epochs']} epochs"))
else:
    missing.append("la")
if missing:
    lines += ["", "missing results: " + ", ".join(missing)]
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text)
sys.exit(1 if missing else 0)
PYEOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
say "done in $(( $(date +%s) - T0 ))s, status $status; summary $OUT/summary.md"
exit "$status"
